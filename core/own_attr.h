/* own_attr.h: instance attributes read from the instance's dict under a guard on the exact type and its
 * version tag, shared by trace-run's C extensions (agent/_span_native.c, agent/_otlp_native.c,
 * instrumentors/_wsgi_native.c include it; its functions are static in each). Their init calls own_attr_init().
 */
#ifndef TRACE_RUN_OWN_ATTR_H
#define TRACE_RUN_OWN_ATTR_H

#include <Python.h>
#include <structmember.h>

/* -- a name read from a long-lived dict at each call -----------------------------------------------------------
 * A module's globals (the C reads them at each call, so that a function a program replaced is the one called) and
 * the tracer's instance dict (read at every span) are read by name at every request or span, ~100 instructions a
 * probe. CPython gives a dict a new version tag at every change, drawn from one counter for all dicts (3.9 to
 * 3.13, but an object's dict on 3.13 whose values are still the object's inline ones, below; from 3.14 the tag is
 * gone and every read probes), so the same dict under the same tag holds the same value:
 * the value kept at the last read is returned with no probe. A memo has OWN_MEMO_WAYS entries, one per dict (the
 * tracers of several instrumentors take turns at one call site); a dict not among them takes an entry in turn. The
 * value is borrowed from the dict, which keeps it while its tag is unchanged. */
#define OWN_MEMO_WAYS 4
typedef struct {
    PyObject *dict[OWN_MEMO_WAYS];  /* (compared only) */
    uint64_t version[OWN_MEMO_WAYS];
    PyObject *value[OWN_MEMO_WAYS];  /* (borrowed from dict[i]) */
    unsigned int next;
} OwnMemo;

#if PY_VERSION_HEX < 0x030E0000
#define OWN_MEMO_ON 1
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"  /* (3.12 marks the field for removal, in 3.14) */
#endif
static inline uint64_t
own_dict_version(PyObject *dict)
{
    return ((PyDictObject *)dict)->ma_version_tag;
}
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#else
#define OWN_MEMO_ON 0
#endif

/* dict[key], borrowed (NULL: absent, no error set; or an error set), as PyDict_GetItemWithError answers it */
static inline PyObject *
own_memo_get(PyObject *dict, PyObject *key, OwnMemo *m)
{
#if OWN_MEMO_ON
#if PY_VERSION_HEX >= 0x030D0000
    /* 3.13 keeps an object's attributes in its inline values after its dict is made (the dict's split values are
     * those): an attribute set then changes the value without a new tag. Such a dict is probed every time. */
    if (((PyDictObject *)dict)->ma_values != NULL)
        return PyDict_GetItemWithError(dict, key);
#endif
    uint64_t version = own_dict_version(dict);
    int i = 0;
    while (i < OWN_MEMO_WAYS && m->dict[i] != dict)
        i++;
    if (i < OWN_MEMO_WAYS && m->version[i] == version)
        return m->value[i];
    PyObject *v = PyDict_GetItemWithError(dict, key);
    if (i == OWN_MEMO_WAYS)
        i = (int)(m->next++ % OWN_MEMO_WAYS);
    m->dict[i] = v != NULL || !PyErr_Occurred() ? dict : NULL;  /* (an absence kept too; an error is not) */
    m->version[i] = version;
    m->value[i] = v;
    return v;
#else
    (void)m;
    return PyDict_GetItemWithError(dict, key);
#endif
}

/* -- instance attributes read from the instance's dict, under a guard ---------------------------------------
 * `obj.name` for attributes read at every request or span: read from the instance's dict, as generic getattr
 * reads it there, under a guard armed for one exact type and its version tag: a heap type with generic getattr
 * and an instance dict, and no data descriptor of that name (which generic getattr would take before the dict)
 * when armed. The type's version tag changes with any change of the type or its bases, so a class attribute,
 * property or base replaced since re-arms (and falls back); another type (a subclass, __class__ assigned)
 * re-arms for it. Not in the dict, or a type the guard refused (kept as refused for that version): as before,
 * PyObject_GetAttr. Saves the type's attribute lookup (and its entry in CPython's type attribute cache) per
 * read. `obj.__dict__` likewise (own_dict): the instance's dict where the type's __dict__ is the one type()
 * gives a class (a probe class's getter) and no builtin base has a dict of its own (what that getter checks).
 * Only for trace-run's own objects and the SDK's, never the program's: on CPython 3.11 and 3.12 getting an
 * instance's dict turns its inline attribute values into a dict for good, and the interpreter's specialized
 * reads of that object's attributes take a slower path from then on (a werkzeug Rule read here made Flask's
 * and werkzeug's own reads of it, every request, go through the type's attribute lookup). */
typedef struct {
    PyTypeObject *type;  /* (borrowed: compared only, with its version tag, which no other type gets) */
    unsigned int version;
    int ok;
    OwnMemo memo;  /* the value read from an instance's dict (long-lived objects: the same dict, unchanged) */
} OwnAttr;

static getter own_dict_getter;  /* the __dict__ getter of a class made by type() (set at module init) */
static PyObject *own_dunder_dict;  /* "__dict__", interned */
static PyObject *own_lock_names[2];  /* "acquire", "release", interned */
static PyObject *own_empty_tuple;  /* () for the extensions' calls (made once, at init) */

/* the module's init calls this once: 0, or -1 with an error set */
static inline int
own_attr_init(void)
{
    if (own_dunder_dict == NULL && (own_dunder_dict = PyUnicode_InternFromString("__dict__")) == NULL)
        return -1;
    if (own_lock_names[0] == NULL && (own_lock_names[0] = PyUnicode_InternFromString("acquire")) == NULL)
        return -1;
    if (own_lock_names[1] == NULL && (own_lock_names[1] = PyUnicode_InternFromString("release")) == NULL)
        return -1;
    if (own_empty_tuple == NULL && (own_empty_tuple = PyTuple_New(0)) == NULL)
        return -1;
    if (own_dict_getter != NULL)
        return 0;
    PyObject *probe = PyObject_CallFunction((PyObject *)&PyType_Type, "s()N", "_probe", PyDict_New());
    if (probe == NULL)
        return -1;
    PyObject *d = _PyType_Lookup((PyTypeObject *)probe, own_dunder_dict);
    if (d != NULL && Py_IS_TYPE(d, &PyGetSetDescr_Type))
        own_dict_getter = ((PyGetSetDescrObject *)d)->d_getset->get;
    Py_DECREF(probe);
    return 0;
}

/* 1 where the guard holds for obj's type (armed now if needed), 0 where it does not */
static inline int
own_guard(PyTypeObject *t, PyObject *name, OwnAttr *g)
{
    if (t == g->type && t->tp_version_tag == g->version && PyType_HasFeature(t, Py_TPFLAGS_VALID_VERSION_TAG))
        return g->ok;
    g->type = NULL;
    if (!PyType_HasFeature(t, Py_TPFLAGS_HEAPTYPE) || t->tp_getattro != PyObject_GenericGetAttr
        || t->tp_dictoffset == 0)
        return 0;
    PyObject *d = _PyType_Lookup(t, name);  /* (assigns the version tag where it can) */
    int ok;
    if (name == own_dunder_dict) {
        ok = own_dict_getter != NULL && d != NULL && Py_IS_TYPE(d, &PyGetSetDescr_Type)
             && ((PyGetSetDescrObject *)d)->d_getset->get == own_dict_getter;
        for (PyTypeObject *b = t; ok && b != NULL; b = b->tp_base)
            if (!PyType_HasFeature(b, Py_TPFLAGS_HEAPTYPE) && b->tp_dictoffset != 0)
                ok = 0;  /* (a builtin base with a dict: the getter reads that base's descriptor) */
    }
    else
        ok = d == NULL || Py_TYPE(d)->tp_descr_set == NULL;
    if (!PyType_HasFeature(t, Py_TPFLAGS_VALID_VERSION_TAG))
        return 0;
    g->type = t;
    g->version = t->tp_version_tag;
    g->ok = ok;
    return ok;
}

static inline PyObject *
own_attr(PyObject *obj, PyObject *name, OwnAttr *g)
{
    if (own_guard(Py_TYPE(obj), name, g)) {
        PyObject *d = PyObject_GenericGetDict(obj, NULL);
        if (d == NULL)
            PyErr_Clear();
        else {
            PyObject *v = PyDict_CheckExact(d) ? own_memo_get(d, name, &g->memo) : NULL;
            Py_XINCREF(v);
            Py_DECREF(d);
            if (v != NULL || PyErr_Occurred())
                return v;
        }
    }
    return PyObject_GetAttr(obj, name);
}

/* obj.__dict__ (a new reference) */
static inline PyObject *
own_dict(PyObject *obj, OwnAttr *g)
{
    if (own_guard(Py_TYPE(obj), own_dunder_dict, g))
        return PyObject_GenericGetDict(obj, NULL);
    return PyObject_GetAttr(obj, own_dunder_dict);
}

/* -- fields kept in a class's __slots__ ------------------------------------------------------------------------
 * trace-run's span class keeps its fields in __slots__ (agent/fastspan.py): a member descriptor of the class's
 * own reads and writes a pointer at a fixed offset in the instance. The extensions find each offset once (when
 * configured, for the exact class they were given) and read the field there: what the descriptor reads, without
 * the type lookup and the call. NULL there is a field never set (Python's AttributeError). */

/* the offset of `name`'s slot in instances of `type` (a writable object member of the class's own __dict__), or
 * -1 (no exception set) where it is not one */
static inline Py_ssize_t
own_slot_offset(PyTypeObject *type, PyObject *name)
{
    PyObject *d = type->tp_dict == NULL ? NULL : PyDict_GetItemWithError(type->tp_dict, name);
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyErr_Clear();
        return -1;
    }
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (((PyMemberDescrObject *)d)->d_common.d_type != type || m->type != T_OBJECT_EX || (m->flags & READONLY)
        || m->offset <= 0)
        return -1;
    return m->offset;
}

/* each name's offset in out[] (own_slot_offset): 1 where all are slots of `type`, else 0 */
static inline int
own_slot_offsets(PyTypeObject *type, PyObject *const *names, int n, Py_ssize_t *out)
{
    for (int i = 0; i < n; i++)
        if ((out[i] = own_slot_offset(type, names[i])) < 0)
            return 0;
    return 1;
}

/* the slot at `offset` of obj (borrowed; NULL: never set) */
#define OWN_SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))

/* obj's slot at `offset` set to value (a new reference taken; the old one released) */
static inline void
own_slot_set(PyObject *obj, Py_ssize_t offset, PyObject *value)
{
    Py_INCREF(value);
    Py_XSETREF(OWN_SLOT(obj, offset), value);
}

/* -- a lock's acquire and release, called directly ------------------------------------------------------------
 * lock.acquire() / lock.release() as `PyObject_CallMethodNoArgs(lock, name)` calls them. For a lock of an
 * immutable type without instance dicts (a builtin's: _thread.lock) the method that call finds is the type's own
 * method descriptor, which cannot change: it is looked up once for the last such type seen (held), and its C
 * function called directly with what the descriptor would pass it. Anything else (a Python lock class, a method
 * of another calling convention): by name, as before. */
enum { OWN_ACQUIRE, OWN_RELEASE };
typedef struct {
    PyTypeObject *type;  /* the last immutable lock type seen (held), or NULL */
    PyMethodDef *methods[2];  /* its acquire, release (NULL: by name) */
} LockMethods;

static inline PyObject *
lock_call(PyObject *lock, int which, LockMethods *lm)
{
    PyTypeObject *type = Py_TYPE(lock);
#ifdef Py_TPFLAGS_IMMUTABLETYPE
    if (type != lm->type && PyType_HasFeature(type, Py_TPFLAGS_IMMUTABLETYPE) && type->tp_dictoffset == 0) {
        for (int i = 0; i < 2; i++) {
            PyObject *d = _PyType_Lookup(type, own_lock_names[i]);
            PyMethodDef *m = NULL;
            if (d != NULL && Py_IS_TYPE(d, &PyMethodDescr_Type) && ((PyMethodDescrObject *)d)->d_common.d_type == type) {
                m = ((PyMethodDescrObject *)d)->d_method;
                int flags = m->ml_flags & ~METH_COEXIST;
                if (flags != METH_NOARGS && flags != METH_VARARGS && flags != (METH_VARARGS | METH_KEYWORDS))
                    m = NULL;
            }
            lm->methods[i] = m;
        }
        Py_INCREF(type);
        Py_XSETREF(lm->type, type);
    }
#endif
    PyMethodDef *m = type == lm->type ? lm->methods[which] : NULL;
    if (m == NULL)
        return PyObject_CallMethodNoArgs(lock, own_lock_names[which]);
    if (Py_EnterRecursiveCall(" while calling a Python object"))
        return NULL;
    PyObject *r;
    switch (m->ml_flags & ~METH_COEXIST) {
    case METH_NOARGS:
        r = m->ml_meth(lock, NULL);
        break;
    case METH_VARARGS:
        r = m->ml_meth(lock, own_empty_tuple);
        break;
    default: /* METH_VARARGS | METH_KEYWORDS */
        r = ((PyCFunctionWithKeywords)(void (*)(void))m->ml_meth)(lock, own_empty_tuple, NULL);
        break;
    }
    Py_LeaveRecursiveCall();
    return r;
}

#endif
