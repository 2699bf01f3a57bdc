/* The two fast branches of fastspan.Tracer.start_span, the fast path of fastspan.Span.set_attribute and
 * fastspan.Span.end, in C.
 *
 * configure(names) (fastspan.use_native) gives the objects the Python code compares with or calls, and returns
 * three method descriptors that fastspan installs as Tracer.start_span, Span.set_attribute and Span.end (a
 * method descriptor: called without a bound method made, cheaper than a Python method calling C). Each does what
 * the Python method does for its common case and makes the same objects (tests/test_span_native.py): the
 * span's slots set to the same values, its Attributes as _AttributeMaker.make makes them, its ids
 * drawn by the random module's getrandbits (read from the module at each call, as the Python code does), in
 * the same order, a zero redrawn by the id generator. Anything else, it calls the Python method (kept as
 * fastspan._python_start_span / _python_set_attribute / _python_end) with the same arguments: a root or child
 * the fast branches do not decide (links, a remote or foreign parent, a sampler without a plan, a disabled
 * tracer, the SDK's constructor fallback), an ended span or a full one, a value that is not plain, a span not
 * started or ended already (the Python method's error or warning).
 *
 * An error of this code (or a Python object not as expected) is reported (fastspan's `report`) and the
 * Python method runs instead: it never reaches the program. Exceptions of the program's own code that the
 * Python method would call at the same point (a deferred `_make`, a span processor's on_start, _on_ending or
 * on_end, the end metrics) propagate as they would from it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include "../core/own_attr.h"

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
Py_NewRef(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
#endif

/* -- configure()'s objects ------------------------------------------------------------------------------- */

enum {
    C_TRACER, C_SPAN, C_SPAN_SLOTS, C_MAKER, C_BOUNDED, C_ATTRIBUTE_STATE, C_SPAN_CONTEXT, C_NON_RECORDING,
    C_CONTEXT, C_DEFAULT_STATE,
    C_ROOT_SAMPLED, C_ROOT_DROPPED, C_SAMPLED, C_SAMPLED_RANDOM, C_RANDOM_FLAG, C_SPAN_KEY, C_INTERNAL,
    C_LOCK_FACTORY, C_LOCK_TYPE, C_RLOCK_FUNCTION, C_THREADING_DICT, C_RANDOM_DICT, C_RUNTIME_DICT, C_ROUTE,
    C_NOOP_END, C_HAS_IS_ENABLED, C_PYTHON_START, C_PYTHON_SET, C_REPORT, C_UNPACK2, C_TIME_NS, C_PYTHON_END,
    C_PYTHON_IS_RECORDING, C_PYTHON_UPDATE_NAME, C_NON_RECORDING_INIT, N_CONF
};
static const char *conf_names[N_CONF] = {
    "tracer", "span", "span_slots", "maker", "bounded", "attribute_state", "span_context", "non_recording",
    "context", "default_state",
    "root_sampled", "root_dropped", "sampled", "sampled_random", "random_flag", "span_key", "internal",
    "lock_factory", "lock_type", "rlock_function", "threading_dict", "random_dict", "runtime_dict", "route",
    "noop_end", "has_is_enabled", "python_start", "python_set", "report", "unpack2", "time_ns", "python_end",
    "python_is_recording", "python_update_name", "non_recording_init"};
static PyObject *conf[N_CONF];
static int configured;
static long random_flag = -1;  /* TraceFlags.RANDOM_TRACE_ID, -1: this API has none */
static int has_is_enabled;
static int fail_next;  /* tests: this many calls fail inside (the Python method then runs) */
static PyObject *non_recording_code;  /* the code of conf's non_recording_init (NULL: call the class) */

/* interned names */
enum {
    S_ROOT_BOUND, S_CHILD_SAMPLED, S_TRACER_CONFIG, S_IS_ENABLED, S_SPAN_FIELDS, S_MAKER, S_RESOURCE, S_SAMPLER,
    S_SPAN_PROCESSOR, S_SPAN_LIMITS, S_METRICS_OFF, S_METRICS, S_ID_GENERATOR, S_FIELDS_OK, S_GETRANDBITS,
    S_GENERATE_TRACE_ID, S_GENERATE_SPAN_ID, S_GET_CURRENT, S_CRLOCK, S_FAST, S_STATE, S_DICT_TYPE,
    S_LOCK_FACTORY, S_MAXLEN, S_MAX_VALUE_LEN, S_MAKE, S_ROUTE_KEY, S_SPAN_PROCESSORS, S_ON_START,
    S_PARENT_CONTEXT, S_GET, S_INIT,
    /* span fields, in the order of start_span's dict display */
    S_NAME, S_CONTEXT, S_KIND, S_PARENT, S_START_TIME, S_ATTRIBUTES, S_FRESOURCE, S_FSAMPLER, S_RECORD_EXCEPTION,
    S_SET_STATUS, S_FSPAN_PROCESSOR, S_LIMITS, S_LOCK, S_RECORD_END_METRICS,
    S_END_TIME, S_SDICT, S_IMMUTABLE, S_ON_ENDING, S_END_TIME_ARG,
    N_STR
};
static const char *str_values[N_STR] = {
    "_root_bound", "_child_sampled", "_tracer_config", "is_enabled", "_span_fields", "_maker", "resource",
    "sampler", "span_processor", "_span_limits", "_metrics_off", "_metrics", "id_generator", "_fields_ok",
    "getrandbits", "generate_trace_id", "generate_span_id", "get_current", "_CRLock", "fast", "_state",
    "_dict_type", "_lock_factory", "maxlen", "max_value_len", "make", "_trace_run_route",
    "_span_processors", "on_start", "parent_context", "get", "__init__",
    "_name", "_context", "_kind", "_parent", "_start_time", "_attributes", "_resource", "_sampler",
    "_record_exception", "_set_status_on_exception", "_span_processor", "_limits", "_lock", "_record_end_metrics",
    "_end_time", "_dict", "_immutable", "_on_ending", "end_time"};
static PyObject *S[N_STR];
static OwnMemo memo[N_STR];  /* get()'s, by the name's index in S */

/* the span class's slots (core/own_attr.h): each field's offset by its name's index in S (set by configure for
 * the span fields named above and _maker), and every slot's, in the order of span_slots (the tracer's
 * _span_fields template gives a value for each, in that order) */
#define MAX_SLOTS 64
static Py_ssize_t span_off[N_STR];
static Py_ssize_t slot_off[MAX_SLOTS];
static Py_ssize_t n_slots;
#define SF(span, key) OWN_SLOT(span, span_off[key])
/* the same for the attribute maker's fields (fast, _state, _dict_type, _lock_factory, maxlen, max_value_len) */
static Py_ssize_t maker_off[N_STR];
#define MF(maker, key) OWN_SLOT(maker, maker_off[key])
static const int maker_fields[] = {S_FAST, S_STATE, S_DICT_TYPE, S_LOCK_FACTORY, S_MAXLEN, S_MAX_VALUE_LEN};
#define N_MAKER_FIELDS ((int)(sizeof(maker_fields) / sizeof(maker_fields[0])))
/* the span's attributes (fastspan.Attributes): the offsets of _dict, _lock and of the fields the maker's _state
 * gives values for, in attribute_state's order (maxlen, dropped, max_value_len, _immutable; an older SDK's more) */
#define MAX_ATTRIBUTE_STATE 8
static Py_ssize_t attributes_dict_off, attributes_lock_off, attributes_immutable_off;
static Py_ssize_t attributes_state_off[MAX_ATTRIBUTE_STATE], n_attribute_state;
static PyObject *bits128, *bits64, *kw_parent_context;

/* start_span's parameters, in order, and their defaults (set by configure) */
#define N_PARAMS 9
static const char *param_names[N_PARAMS] = {"name", "context", "kind", "attributes", "links", "start_time",
                                            "record_exception", "set_status_on_exception", "_make"};
static PyObject *param_str[N_PARAMS];

/* What a helper gives: OK, DECLINE (not its case; no exception set), FAIL (an error of this code or an object
 * not as expected, exception set: reported, then the Python method runs) or RAISE (the program's exception,
 * set, that the Python method would raise at this point too: propagates). */
#define OK 0
#define DECLINE 1
#define FAIL 2
#define RAISE 3

/* `d[S[key]]` (borrowed), NULL with no exception where it is not there; d a module's globals or a long-lived
 * object's dict (the tracer's, a span processor's), its last answer kept while d is unchanged (own_attr.h's memo) */
static inline PyObject *
get(PyObject *d, int key)
{
    return own_memo_get(d, S[key], &memo[key]);
}

/* an object's instance __dict__ (new reference) where it is an exact dict, else NULL (an exception maybe set) */
static PyObject *
instance_dict(PyObject *obj)
{
    PyObject *d = PyObject_GenericGetDict(obj, NULL);
    if (d != NULL && !PyDict_CheckExact(d)) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

static OwnAttr g_is_enabled, g_processor_dict;

/* -- fallback and errors --------------------------------------------------------------------------------- */

static void
report_error(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (conf[C_REPORT] != NULL && value != NULL) {
        PyObject *r = PyObject_CallOneArg(conf[C_REPORT], value);
        if (r == NULL)
            PyErr_Clear();
        Py_XDECREF(r);
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* python(self, *args, **kwargs) from a vectorcall's arguments */
static PyObject *
call_python(PyObject *python, PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *stack[16];
    PyObject **all = stack;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    Py_ssize_t n = 1 + nargs + nkw;
    if (n > 16) {
        all = PyMem_Malloc(n * sizeof(PyObject *));
        if (all == NULL)
            return PyErr_NoMemory();
    }
    all[0] = self;
    memcpy(all + 1, args, (nargs + nkw) * sizeof(PyObject *));
    PyObject *result = PyObject_Vectorcall(python, all, 1 + nargs, kwnames);
    if (all != stack)
        PyMem_Free(all);
    return result;
}

/* -- BoundedAttributes, as _AttributeMaker.make ------------------------------------------------------------ */

/* maker.plain(attributes) for an exact dict: 1 plain, 0 not, -1 error */
static int
plain(PyObject *attributes, PyObject *maxlen, PyObject *max_value_len)
{
    Py_ssize_t limit = -1, value_limit = -1;
    if (maxlen != Py_None) {
        if (!PyLong_CheckExact(maxlen))
            return 0;
        limit = PyLong_AsSsize_t(maxlen);
        if (limit == -1 && PyErr_Occurred())
            return -1;
        if (limit < 0) {
            /* len(...) > a negative maxlen: never plain */
            return 0;
        }
        if (PyDict_GET_SIZE(attributes) > limit)
            return 0;
    }
    if (max_value_len != Py_None) {
        if (!PyLong_CheckExact(max_value_len))
            return 0;
        value_limit = PyLong_AsSsize_t(max_value_len);
        if (value_limit == -1 && PyErr_Occurred())
            return -1;
        if (value_limit < 0)
            value_limit = -2; /* any str longer than a negative limit: every str (len >= 0 > limit) */
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(attributes, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key) || PyUnicode_GET_LENGTH(key) == 0)
            return 0;
        PyTypeObject *t = Py_TYPE(value);
        if (t == &PyUnicode_Type) {
            if (value_limit != -1 && (value_limit == -2 || PyUnicode_GET_LENGTH(value) > value_limit))
                return 0;
        }
        else if (t != &PyLong_Type && t != &PyFloat_Type && t != &PyBool_Type)
            return 0;
    }
    return 1;
}

/* a new lock as maker._lock_factory() makes it (threading.RLock: its _CRLock, read as it reads it) */
static PyObject *
new_lock(PyObject *factory)
{
    if (factory == conf[C_RLOCK_FUNCTION]) {
        PyObject *crlock = get(conf[C_THREADING_DICT], S_CRLOCK);
        if (crlock != NULL && crlock != Py_None)
            return PyObject_CallNoArgs(crlock);
        if (PyErr_Occurred())
            return NULL;
    }
    return PyObject_CallNoArgs(factory);
}

/* _AttributeMaker.make(attributes): OK with *out set, FAIL, or RAISE (maker.make's own exception) */
static int
make_attributes(PyObject *maker, PyObject *attributes, PyObject **out)
{
    PyObject *made = NULL, *stored = NULL, *lock = NULL;
    if (Py_TYPE(maker) != (PyTypeObject *)conf[C_MAKER])
        goto general;
    /* (borrowed from the maker, which the caller holds: nothing below replaces them) */
    PyObject *fast = MF(maker, S_FAST);
    PyObject *proto = MF(maker, S_STATE);
    PyObject *dict_type = MF(maker, S_DICT_TYPE);
    PyObject *factory = MF(maker, S_LOCK_FACTORY);
    PyObject *maxlen = MF(maker, S_MAXLEN);
    PyObject *max_value_len = MF(maker, S_MAX_VALUE_LEN);
    if (fast != Py_True || proto == NULL || !PyTuple_CheckExact(proto) || PyTuple_GET_SIZE(proto) != n_attribute_state
        || dict_type != (PyObject *)&PyDict_Type
        || factory == NULL || maxlen == NULL || max_value_len == NULL)
        goto fail_or_general;
    if (attributes == Py_None || (PyDict_CheckExact(attributes) && PyDict_GET_SIZE(attributes) == 0))
        stored = PyDict_New();
    else if (PyDict_CheckExact(attributes)) {
        int p = plain(attributes, maxlen, max_value_len);
        if (p < 0)
            goto fail;
        if (p == 0)
            goto general;
        stored = PyDict_Copy(attributes);
    }
    else
        goto general;
    if (stored == NULL)
        goto fail;
    lock = new_lock(factory);
    if (lock == NULL)
        goto fail;
    made = PyBaseObject_Type.tp_new((PyTypeObject *)conf[C_BOUNDED], own_empty_tuple, NULL);
    if (made == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n_attribute_state; i++)
        own_slot_set(made, attributes_state_off[i], PyTuple_GET_ITEM(proto, i));
    OWN_SLOT(made, attributes_dict_off) = stored;  /* (the references move into the slots) */
    OWN_SLOT(made, attributes_lock_off) = lock;
    *out = made;
    return OK;
fail_or_general:
    if (PyErr_Occurred())
        goto fail;
general:
    *out = PyObject_CallMethodOneArg(maker, S[S_MAKE], attributes);
    return *out == NULL ? RAISE : OK;
fail:
    Py_XDECREF(made);
    Py_XDECREF(stored);
    Py_XDECREF(lock);
    return FAIL;
}

/* -- ids ------------------------------------------------------------------------------------------------- */

/* `random.getrandbits(bits) or self.id_generator.<redraw>()`: OK with *id set (new reference), FAIL (random has
 * no getrandbits: nothing called) or RAISE (what the calls raised, as they raise in the Python method, or the
 * AttributeError of a tracer without id_generator: it is read only for a zero, as the Python method reads it) */
static int
draw(PyObject *bits, PyObject *self, PyObject *redraw, PyObject **out)
{
    PyObject *getrandbits = get(conf[C_RANDOM_DICT], S_GETRANDBITS);
    if (getrandbits == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "random has no getrandbits");
        return FAIL;
    }
    Py_INCREF(getrandbits);
    PyObject *id = PyObject_CallOneArg(getrandbits, bits);
    Py_DECREF(getrandbits);
    if (id == NULL)
        return RAISE;
    int truth = PyObject_IsTrue(id);
    if (truth > 0) {
        *out = id;
        return OK;
    }
    Py_DECREF(id);
    if (truth < 0)
        return RAISE;
    PyObject *generator = PyObject_GetAttr(self, S[S_ID_GENERATOR]);
    if (generator == NULL)
        return RAISE;
    *out = PyObject_CallMethodNoArgs(generator, redraw);
    Py_DECREF(generator);
    return *out == NULL ? RAISE : OK;
}

/* trace_id & (2**64 - 1) >= bound: 1, 0, -1 error */
static int
dropped(PyObject *trace_id, PyObject *bound)
{
    if (PyLong_CheckExact(trace_id) && PyLong_CheckExact(bound)) {
        unsigned long long low = PyLong_AsUnsignedLongLongMask(trace_id);
        if (low == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        int overflow;
        long long b = PyLong_AsLongLongAndOverflow(bound, &overflow);
        if (b == -1 && PyErr_Occurred())
            return -1;
        if (overflow < 0 || (overflow == 0 && b <= 0))
            return 1; /* low >= 0 >= bound */
        if (overflow == 0)
            return low >= (unsigned long long)b;
        if (_PyLong_NumBits(bound) > 64)
            return 0; /* bound > 2**64 - 1 >= low (always_on's 2**64: no OverflowError made and cleared) */
        return low >= PyLong_AsUnsignedLongLongMask(bound); /* bound in [2**63, 2**64): its digits as they are */
    }
    PyObject *limit = PyLong_FromUnsignedLongLong(0xFFFFFFFFFFFFFFFFULL);
    if (limit == NULL)
        return -1;
    PyObject *low = PyNumber_And(trace_id, limit);
    Py_DECREF(limit);
    if (low == NULL)
        return -1;
    int r = PyObject_RichCompareBool(low, bound, Py_GE);
    Py_DECREF(low);
    return r;
}

/* SpanContext as tuple.__new__(SpanContext, (...)) makes it (steals nothing): its tuple_subtype_new allocates the
 * subtype and copies the items in, without the two tuples passed to it. From 3.14 a tuple caches its hash, and the
 * cache's "not yet" mark is set by tuple's own code only (tp_alloc zeroes it: hash() would answer 0): there, the
 * two tuples and tuple.__new__ */
static PyObject *
span_context(PyObject *trace_id, PyObject *span_id, PyObject *flags, PyObject *state)
{
    PyTypeObject *type = (PyTypeObject *)conf[C_SPAN_CONTEXT];
#if PY_VERSION_HEX < 0x030E0000
    PyObject *ctx = type->tp_alloc(type, 6);
    if (ctx == NULL)
        return NULL;
    PyObject *items[6] = {trace_id, span_id, Py_False, flags, state, Py_True};
    for (int i = 0; i < 6; i++)
        PyTuple_SET_ITEM(ctx, i, Py_NewRef(items[i]));
    return ctx;
#else
    PyObject *items = PyTuple_Pack(6, trace_id, span_id, Py_False, flags, state, Py_True);
    if (items == NULL)
        return NULL;
    PyObject *args = PyTuple_Pack(1, items);
    Py_DECREF(items);
    if (args == NULL)
        return NULL;
    PyObject *ctx = PyTuple_Type.tp_new(type, args, NULL);
    Py_DECREF(args);
    return ctx;
#endif
}

/* NonRecordingSpan(ctx) (new reference; NULL: what it raised). Made here where the call would run what configure
 * checked: type.__call__, object.__new__, and the API's __init__ (`self._context = context`, its code): the instance
 * of object.__new__, then that one store, done as the __init__ does it (its __setattr__, a descriptor...). Each
 * call re-checks what a program could have replaced since (the metaclass's call, __new__, __init__ or its code);
 * anything else: the class is called. */
static PyObject *
non_recording(PyObject *ctx)
{
    PyTypeObject *type = (PyTypeObject *)conf[C_NON_RECORDING];
    if (non_recording_code != NULL && Py_TYPE(type)->tp_call == PyType_Type.tp_call
        && type->tp_new == PyBaseObject_Type.tp_new) {
        PyObject *init = _PyType_Lookup(type, S[S_INIT]);  /* (borrowed; the method cache's) */
        if (init == conf[C_NON_RECORDING_INIT] && PyFunction_GET_CODE(init) == non_recording_code) {
            PyObject *span = type->tp_new(type, own_empty_tuple, NULL);
            if (span != NULL && PyObject_SetAttr(span, S[S_CONTEXT], ctx) < 0)
                Py_CLEAR(span);
            return span;
        }
    }
    return PyObject_CallOneArg((PyObject *)type, ctx);
}

static PyObject *
now_ns(void)
{
#if defined(CLOCK_REALTIME) && !defined(_WIN32) && !defined(__APPLE__)
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0)
        return PyLong_FromLongLong((long long)ts.tv_sec * 1000000000LL + (long long)ts.tv_nsec);
#endif
    return PyObject_CallNoArgs(conf[C_TIME_NS]);
}

/* -- start_span ------------------------------------------------------------------------------------------ */

/* the tracer's enabled flag as the fast branches read it: 1, 0, -1 error */
static int
enabled(PyObject *td)
{
    if (!has_is_enabled)
        return 1;
    PyObject *config = get(td, S_TRACER_CONFIG);
    if (config == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *flag = own_attr(config, S[S_IS_ENABLED], &g_is_enabled);
    if (flag == NULL)
        return -1;
    int r = PyObject_IsTrue(flag);
    Py_DECREF(flag);
    return r;
}

/* `_route(processor)`, its cache read as Span.end reads it (new reference; NULL: what _route raised) */
static PyObject *
get_route(PyObject *processor)
{
    PyObject *route = NULL;
    PyObject *pd = own_dict(processor, &g_processor_dict);
    if (pd == NULL)
        PyErr_Clear();
    else {
        if (PyDict_Check(pd)) {
            PyObject *cached = get(pd, S_ROUTE_KEY);
            PyObject *processors = cached == NULL ? NULL : get(pd, S_SPAN_PROCESSORS);
            if (processors != NULL && PyTuple_Check(cached) && PyTuple_GET_SIZE(cached) >= 4
                && PyTuple_GET_ITEM(cached, 0) == processors)
                route = Py_NewRef(cached);
            PyErr_Clear();
        }
        Py_DECREF(pd);
    }
    if (route == NULL)
        route = PyObject_CallOneArg(conf[C_ROUTE], processor);
    return route;
}

/* `if _route(processor)[1]: processor.on_start(span, parent_context=context)`: OK or RAISE (what the Python
 * method would raise there) */
static int
call_on_start(PyObject *processor, PyObject *span, PyObject *context)
{
    PyObject *route = get_route(processor);
    if (route == NULL)
        return RAISE;
    PyObject *flag = PySequence_GetItem(route, 1);
    Py_DECREF(route);
    if (flag == NULL)
        return RAISE;
    int truth = PyObject_IsTrue(flag);
    Py_DECREF(flag);
    if (truth < 0)
        return RAISE;
    if (truth == 0)
        return OK;
    PyObject *method = PyObject_GetAttr(processor, S[S_ON_START]);
    if (method == NULL)
        return RAISE;
    PyObject *call_args[2] = {span, context};
    PyObject *r = PyObject_Vectorcall(method, call_args, 1, kw_parent_context);
    Py_DECREF(method);
    if (r == NULL)
        return RAISE;
    Py_DECREF(r);
    return OK;
}

/* start_span's arguments (borrowed) by position: OK or DECLINE (an unexpected argument: Python's TypeError) */
static int
parse(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **p)
{
    if (nargs > N_PARAMS)
        return DECLINE;
    for (int i = 0; i < N_PARAMS; i++)
        p[i] = NULL;
    for (Py_ssize_t i = 0; i < nargs; i++)
        p[i] = args[i];
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, k);
        int found = -1;
        for (int i = 0; i < N_PARAMS && found < 0; i++)
            if (kw == param_str[i])
                found = i;
        for (int i = 0; i < N_PARAMS && found < 0; i++)
            if (PyUnicode_Check(kw) && PyUnicode_Compare(kw, param_str[i]) == 0)
                found = i;
        if (PyErr_Occurred())
            PyErr_Clear();
        if (found < 0 || p[found] != NULL)
            return DECLINE;
        p[found] = args[nargs + k];
    }
    if (p[0] == NULL)
        return DECLINE;
    PyObject *defaults[N_PARAMS] = {NULL, Py_None, conf[C_INTERNAL], Py_None, own_empty_tuple, Py_None, Py_True,
                                    Py_True, Py_None};
    for (int i = 1; i < N_PARAMS; i++)
        if (p[i] == NULL)
            p[i] = defaults[i];
    return OK;
}

/* the tracer's field `key` (new reference), read where the Python method reads it: from its dict, else as
 * `self.<key>` reads it (NULL: what that raised) */
static PyObject *
late_field(PyObject *self, PyObject *td, int key)
{
    PyObject *value = get(td, key);
    if (value != NULL)
        return Py_NewRef(value);
    if (PyErr_Occurred())
        return NULL;
    return PyObject_GetAttr(self, S[key]);
}

/* `Tracer._fields_ok is True`: 1, 0, -1 error. From the types' method caches where it is the class's plain True
 * and the metaclass has nothing of that name (what type's getattr would look at first); else as it reads it */
static int
fields_ok(void)
{
    PyTypeObject *tracer = (PyTypeObject *)conf[C_TRACER];
    if (_PyType_Lookup(tracer, S[S_FIELDS_OK]) == Py_True && _PyType_Lookup(Py_TYPE(tracer), S[S_FIELDS_OK]) == NULL)
        return 1;
    PyObject *ok = PyObject_GetAttr((PyObject *)tracer, S[S_FIELDS_OK]);
    if (ok == NULL)
        return -1;
    int r = ok == Py_True;
    Py_DECREF(ok);
    return r;
}

/* what the fast branches need of the tracer for a span that records, checked before any id is drawn (a DECLINE
 * after that would draw them again): Tracer._fields_ok, the SDK's metrics off (or none). OK with the function its
 * spans call at their end (borrowed: conf's or None), else DECLINE or FAIL */
static int
recordable(PyObject *td, PyObject **record_end_metrics)
{
    int ok = fields_ok();
    if (ok <= 0)
        return ok < 0 ? FAIL : DECLINE;
    PyObject *off = get(td, S_METRICS_OFF);
    if (off == Py_True) {
        *record_end_metrics = conf[C_NOOP_END];
        return OK;
    }
    if (off == Py_False && get(td, S_METRICS) == Py_None) {
        *record_end_metrics = Py_None;
        return OK;
    }
    return PyErr_Occurred() ? FAIL : DECLINE;
}

/* a root bound no trace id passes (`_DROP`'s 0): 1, else 0 */
static int
never_sampled(PyObject *bound)
{
    if (!PyLong_CheckExact(bound))
        return 0;
    int overflow;
    long long b = PyLong_AsLongLongAndOverflow(bound, &overflow);
    if (b == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return overflow < 0 || (overflow == 0 && b <= 0);
}

/* the tracer's fields a span that records is made of, in the order the Python method reads them */
static const int span_field_keys[] = {S_SPAN_FIELDS, S_MAKER, S_RESOURCE, S_SAMPLER, S_SPAN_PROCESSOR, S_SPAN_LIMITS};
#define N_HELD ((int)(sizeof(span_field_keys) / sizeof(span_field_keys[0])))

/* the fast branches of Tracer.start_span: the span with *status OK, else NULL with *status DECLINE, FAIL or
 * RAISE (see above). Each field of the tracer is read where the Python method reads it, but what decides a
 * DECLINE, read before any id is drawn; a root that cannot record reads only what decides it. */
static PyObject *
start_span_fast(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, int *status_out)
{
    int status = DECLINE;
    PyObject *p[N_PARAMS];
    PyObject *td = NULL, *current = NULL, *trace_id = NULL, *span_id = NULL, *ctx = NULL, *made = NULL,
             *name_attrs = NULL, *attributes = NULL, *start = NULL, *lock = NULL, *span = NULL,
             *result = NULL, *bound = NULL;
    /* the span's fields, held: the program's code (a _make, on_start) could replace them meanwhile */
    PyObject *held[N_HELD] = {NULL};
    PyObject *parent, *name, *span_attributes, *record_end_metrics = NULL;
    if (fail_next > 0) {
        fail_next--;
        PyErr_SetString(PyExc_RuntimeError, "_span_native: a failure for the tests");
        status = FAIL;
        goto done;
    }
    if (Py_TYPE(self) != (PyTypeObject *)conf[C_TRACER] || parse(args, nargs, kwnames, p) != OK)
        goto done; /* (a subclass may define what is read here from the instance) */
    PyObject *links = p[4];
    if (!(links == Py_None || (PyTuple_CheckExact(links) && PyTuple_GET_SIZE(links) == 0)
          || (PyList_CheckExact(links) && PyList_GET_SIZE(links) == 0)))
        goto done;
    td = instance_dict(self);
    if (td == NULL) {
        status = PyErr_Occurred() ? FAIL : DECLINE;
        goto done;
    }

    /* the span in the context: (context or the current one).get(_SPAN_KEY) */
    PyObject *context = p[1], *where;
    if (context == Py_None) {
        PyObject *get_current = get(conf[C_RUNTIME_DICT], S_GET_CURRENT);
        if (get_current == NULL) {
            status = PyErr_Occurred() ? FAIL : DECLINE;
            goto done;
        }
        where = PyObject_CallNoArgs(get_current);
    }
    else
        where = Py_NewRef(context);
    if (where == NULL) {
        status = FAIL;
        goto done;
    }
    if (Py_TYPE(where) == (PyTypeObject *)conf[C_CONTEXT] || PyDict_CheckExact(where)) {
        current = PyDict_GetItemWithError(where, conf[C_SPAN_KEY]);
        Py_XINCREF(current);
        if (current == NULL && !PyErr_Occurred())
            current = Py_NewRef(Py_None);
    }
    else
        current = PyObject_CallMethodOneArg(where, S[S_GET], conf[C_SPAN_KEY]);
    Py_DECREF(where);
    if (current == NULL) {
        status = FAIL;
        goto done;
    }

    if (current == Py_None) {
        PyObject *root_bound = get(td, S_ROOT_BOUND);
        if (root_bound == NULL || root_bound == Py_None) {
            status = PyErr_Occurred() ? FAIL : DECLINE;
            goto done;
        }
        int may_record = !never_sampled(root_bound); /* (borrowed: not used after this) */
        int on = enabled(td);
        if (on <= 0) {
            status = on < 0 ? FAIL : DECLINE;
            goto done;
        }
        if (may_record && (status = recordable(td, &record_end_metrics)) != OK)
            goto done;
        if ((status = draw(bits128, self, S[S_GENERATE_TRACE_ID], &trace_id)) != OK
            || (status = draw(bits64, self, S[S_GENERATE_SPAN_ID], &span_id)) != OK)
            goto done;
        /* the bound read again after the draws, as the Python method reads it (its errors, its compare's: raised) */
        status = RAISE;
        bound = late_field(self, td, S_ROOT_BOUND);
        int drop = bound == NULL ? -1 : dropped(trace_id, bound);
        if (drop < 0)
            goto done;
        if (!drop && !may_record && (status = recordable(td, &record_end_metrics)) != OK) {
            /* (the bound replaced by the draws' code, and this tracer's spans not for these branches) */
            if (status == DECLINE)
                PyErr_SetString(PyExc_RuntimeError, "_span_native: the root bound changed while drawing ids");
            status = FAIL;
            goto done;
        }
        if (drop) {
            ctx = span_context(trace_id, span_id, conf[C_ROOT_DROPPED], conf[C_DEFAULT_STATE]);
            if (ctx == NULL) {
                status = FAIL;
                goto done;
            }
            result = non_recording(ctx); /* (what it raises, the Python method's call raises too) */
            goto done;
        }
        ctx = span_context(trace_id, span_id, conf[C_ROOT_SAMPLED], conf[C_DEFAULT_STATE]);
        parent = Py_None;
    }
    else if (Py_TYPE(current) == (PyTypeObject *)conf[C_SPAN]) {
        PyObject *child_sampled = get(td, S_CHILD_SAMPLED);
        if (child_sampled != Py_True) {
            status = PyErr_Occurred() ? FAIL : DECLINE;
            goto done;
        }
        PyObject *pctx = SF(current, S_CONTEXT);
        if (pctx == NULL)
            goto done;
        Py_INCREF(pctx);
        Py_DECREF(current); /* its context held in its place */
        current = pctx;
        if (Py_TYPE(pctx) != (PyTypeObject *)conf[C_SPAN_CONTEXT] || PyTuple_GET_SIZE(pctx) != 6
            || !PyLong_Check(PyTuple_GET_ITEM(pctx, 3)))
            goto done;
        long parent_flags = PyLong_AsLong(PyTuple_GET_ITEM(pctx, 3));
        if (parent_flags == -1 && PyErr_Occurred()) {
            status = FAIL;
            goto done;
        }
        if (!(parent_flags & 0x01))
            goto done;
        int on = enabled(td);
        if (on <= 0) {
            status = on < 0 ? FAIL : DECLINE;
            goto done;
        }
        if ((status = recordable(td, &record_end_metrics)) != OK)
            goto done;
        trace_id = Py_NewRef(PyTuple_GET_ITEM(pctx, 0));
        PyObject *state = PyTuple_GET_ITEM(pctx, 4);
        PyObject *flags = random_flag >= 0 && (parent_flags & random_flag) ? conf[C_SAMPLED_RANDOM] : conf[C_SAMPLED];
        if ((status = draw(bits64, self, S[S_GENERATE_SPAN_ID], &span_id)) != OK)
            goto done;
        ctx = span_context(trace_id, span_id, flags, state == Py_None ? conf[C_DEFAULT_STATE] : state);
        parent = pctx;
    }
    else
        goto done;
    if (ctx == NULL) {
        status = FAIL;
        goto done;
    }

    /* a span that records: from here, what the program's code raises is raised */
    name = p[0];
    span_attributes = p[3];
    if (p[8] != Py_None) {
        made = PyObject_CallNoArgs(p[8]);
        if (made == NULL) {
            status = RAISE;
            goto done;
        }
        if (PyTuple_CheckExact(made) && PyTuple_GET_SIZE(made) == 2)
            name_attrs = Py_NewRef(made);
        else {
            name_attrs = PyObject_CallOneArg(conf[C_UNPACK2], made); /* `name, attributes = made`, its errors */
            if (name_attrs == NULL) {
                status = RAISE;
                goto done;
            }
            if (!PyTuple_CheckExact(name_attrs) || PyTuple_GET_SIZE(name_attrs) != 2) {
                PyErr_SetString(PyExc_TypeError, "unpack2 gave no pair");
                status = FAIL;
                goto done;
            }
        }
        name = PyTuple_GET_ITEM(name_attrs, 0);
        span_attributes = PyTuple_GET_ITEM(name_attrs, 1);
    }
    /* the span's fields, read after _make as the Python method reads them (a missing one: its AttributeError) */
    for (int i = 0; i < N_HELD; i++) {
        if ((held[i] = late_field(self, td, span_field_keys[i])) == NULL) {
            status = RAISE;
            goto done;
        }
    }
    PyObject *span_fields = held[0], *maker = held[1], *resource = held[2], *sampler = held[3],
             *processor = held[4], *limits = held[5];
    status = make_attributes(maker, span_attributes, &attributes);
    if (status != OK)
        goto done;
    status = FAIL;
    start = p[5] != Py_None ? Py_NewRef(p[5]) : now_ns();
    if (start == NULL)
        goto done;
    if (!PyTuple_CheckExact(span_fields) || PyTuple_GET_SIZE(span_fields) != n_slots) {
        PyErr_SetString(PyExc_TypeError, "_span_native: the tracer's _span_fields is not one value a slot");
        goto done;
    }
    lock = PyObject_CallNoArgs(conf[C_LOCK_FACTORY]);
    if (lock == NULL)
        goto done;
    span = PyBaseObject_Type.tp_new((PyTypeObject *)conf[C_SPAN], own_empty_tuple, NULL);
    if (span == NULL)
        goto done;
    /* the tracer's template (every slot), then this span's own fields over it */
    for (Py_ssize_t i = 0; i < n_slots; i++)
        own_slot_set(span, slot_off[i], PyTuple_GET_ITEM(span_fields, i));
    PyObject *values[] = {name, ctx, p[2], parent, start, attributes, resource, sampler, p[6], p[7], processor,
                          limits, lock, record_end_metrics};
    for (int i = 0; i < (int)(sizeof(values) / sizeof(values[0])); i++)
        own_slot_set(span, span_off[S_NAME + i], values[i]);
    status = call_on_start(processor, span, context);
    if (status == OK)
        result = Py_NewRef(span);
done:
    for (int i = 0; i < N_HELD; i++)
        Py_XDECREF(held[i]);
    Py_XDECREF(bound);
    Py_XDECREF(td);
    Py_XDECREF(current);
    Py_XDECREF(trace_id);
    Py_XDECREF(span_id);
    Py_XDECREF(ctx);
    Py_XDECREF(made);
    Py_XDECREF(name_attrs);
    Py_XDECREF(attributes);
    Py_XDECREF(start);
    Py_XDECREF(lock);
    Py_XDECREF(span);
    *status_out = result != NULL ? OK : status;
    return result;
}

static PyObject *
start_span(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    int status;
    PyObject *span = start_span_fast(self, args, nargs, kwnames, &status);
    if (span != NULL || status == RAISE)
        return span;
    if (status == FAIL)
        report_error();
    return call_python(conf[C_PYTHON_START], self, args, nargs, kwnames);
}

/* -- the span lock's acquire and release: core/own_attr.h's lock_call ------------------------------------ */

static LockMethods span_locks;

/* -- set_attribute --------------------------------------------------------------------------------------- */

/* lock.release(), an exception already set kept across it (a `with` block's way): 0; -1 where the release itself
 * failed (its error set, the earlier one dropped) */
static int
release_keeping_error(PyObject *lock)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *r = lock_call(lock, OWN_RELEASE, &span_locks);
    if (r == NULL) {
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(tb);
        return -1;
    }
    Py_DECREF(r);
    PyErr_Restore(et, ev, tb);
    return 0;
}

/* the fast path of Span.set_attribute: OK (done), DECLINE or FAIL */
static int
set_attribute_fast(PyObject *self, PyObject *key, PyObject *value)
{
    int status = DECLINE;
    PyObject *lock = NULL, *r;
    if (fail_next > 0) {
        fail_next--;
        PyErr_SetString(PyExc_RuntimeError, "_span_native: a failure for the tests");
        return FAIL;
    }
    if (Py_TYPE(self) != (PyTypeObject *)conf[C_SPAN] || !PyUnicode_CheckExact(key) || PyUnicode_GET_LENGTH(key) == 0)
        return DECLINE;
    PyTypeObject *kind = Py_TYPE(value);
    if (kind != &PyUnicode_Type && kind != &PyLong_Type && kind != &PyFloat_Type && kind != &PyBool_Type)
        return DECLINE;
    PyObject *maker = SF(self, S_MAKER);
    if (maker == NULL || Py_TYPE(maker) != (PyTypeObject *)conf[C_MAKER])
        goto out;
    PyObject *fast = MF(maker, S_FAST);
    PyObject *maxlen = MF(maker, S_MAXLEN);
    PyObject *max_value_len = MF(maker, S_MAX_VALUE_LEN);
    if (fast != Py_True || maxlen == NULL || max_value_len == NULL)
        goto out;
    if (kind == &PyUnicode_Type && max_value_len != Py_None) {
        if (!PyLong_CheckExact(max_value_len))
            goto out;
        Py_ssize_t limit = PyLong_AsSsize_t(max_value_len);
        if (limit == -1 && PyErr_Occurred())
            goto out;
        if (PyUnicode_GET_LENGTH(value) > limit)
            goto out;
    }
    Py_ssize_t most = -1;
    if (maxlen != Py_None) {
        if (!PyLong_CheckExact(maxlen))
            goto out;
        most = PyLong_AsSsize_t(maxlen);
        if (most == -1 && PyErr_Occurred())
            goto out;
        if (most < 0)
            most = 0;
    }
    lock = SF(self, S_LOCK);
    PyObject *attributes = SF(self, S_ATTRIBUTES);
    if (lock == NULL || attributes == NULL || Py_TYPE(lock) != (PyTypeObject *)conf[C_LOCK_TYPE]
        || Py_TYPE(attributes) != (PyTypeObject *)conf[C_BOUNDED]) {
        lock = NULL;
        goto out;
    }
    PyObject *stored = OWN_SLOT(attributes, attributes_dict_off);
    if (stored == NULL || !PyDict_CheckExact(stored)) {
        lock = NULL;
        goto out;
    }
    Py_INCREF(lock);
    Py_INCREF(stored);
    r = lock_call(lock, OWN_ACQUIRE, &span_locks);
    if (r == NULL) {
        Py_DECREF(stored);
        Py_CLEAR(lock);
        goto out;
    }
    Py_DECREF(r);
    /* with the lock: an ended span is the Python method's (its warning) */
    PyObject *end_time = SF(self, S_END_TIME);
    if (end_time == Py_None) {
        int has = PyDict_Contains(stored, key);
        if (has > 0) {
            if (PyDict_DelItem(stored, key) == 0 && PyDict_SetItem(stored, key, value) == 0)
                status = OK;
        }
        else if (has == 0 && (most < 0 || PyDict_GET_SIZE(stored) < most)) {
            if (PyDict_SetItem(stored, key, value) == 0)
                status = OK;
        }
    }
    Py_DECREF(stored);
    if (release_keeping_error(lock) < 0)
        status = FAIL;
out:
    Py_XDECREF(lock);
    if (status != OK && PyErr_Occurred())
        status = FAIL;
    return status;
}

static PyObject *
set_attribute(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs == 2) {
        int status = set_attribute_fast(self, args[0], args[1]);
        if (status == OK)
            Py_RETURN_NONE;
        if (status == FAIL)
            report_error();
    }
    return call_python(conf[C_PYTHON_SET], self, args, nargs, NULL);
}

/* -- end --------------------------------------------------------------------------------------------------- */

/* Span.end(end_time): OK (ended, its processors called), DECLINE (not started, ended already: the Python
 * method's error or warning; anything unexpected, before any change), FAIL (before any change) or RAISE (what
 * a processor or the end metrics raised, as from the Python method) */
static int
end_fast(PyObject *self, PyObject *end_time)
{
    int status = DECLINE;
    PyObject *lock = NULL, *attributes = NULL, *processor = NULL, *r;
    if (fail_next > 0) {
        fail_next--;
        PyErr_SetString(PyExc_RuntimeError, "_span_native: a failure for the tests");
        return FAIL;
    }
    if (Py_TYPE(self) != (PyTypeObject *)conf[C_SPAN])
        return DECLINE;
    lock = SF(self, S_LOCK);
    attributes = SF(self, S_ATTRIBUTES);
    processor = SF(self, S_FSPAN_PROCESSOR);
    if (lock == NULL || attributes == NULL || processor == NULL || Py_TYPE(lock) != (PyTypeObject *)conf[C_LOCK_TYPE]
        || Py_TYPE(attributes) != (PyTypeObject *)conf[C_BOUNDED]) {
        lock = attributes = processor = NULL;
        goto out;
    }
    Py_INCREF(lock);
    Py_INCREF(attributes);
    Py_INCREF(processor);
    r = lock_call(lock, OWN_ACQUIRE, &span_locks);
    if (r == NULL)
        goto out;
    Py_DECREF(r);
    /* with the lock */
    PyObject *start = SF(self, S_START_TIME);
    PyObject *ended = SF(self, S_END_TIME);
    int changed = 0;
    if (start != NULL && start != Py_None && ended == Py_None) {
        PyObject *now = end_time != Py_None ? Py_NewRef(end_time) : now_ns();
        if (now != NULL) {
            changed = 1;
            Py_SETREF(SF(self, S_END_TIME), now);  /* (the None it replaces: nothing runs) */
            own_slot_set(attributes, attributes_immutable_off, Py_True);  /* (a bool replaced: nothing runs) */
            status = OK;
        }
    }
    if (release_keeping_error(lock) < 0) {
        status = changed ? RAISE : FAIL;
        goto out;
    }
    if (status != OK) {
        if (changed)
            status = RAISE; /* (not expected: ended, a BoundedAttributes that could not be made immutable) */
        goto out;
    }
    /* ended: from here the Python method's steps, their exceptions raised */
    status = RAISE;
    PyObject *metrics = SF(self, S_RECORD_END_METRICS);
    if (metrics != NULL && metrics != conf[C_NOOP_END]) {
        Py_INCREF(metrics);
        int truth = PyObject_IsTrue(metrics);
        r = truth > 0 ? PyObject_CallNoArgs(metrics) : NULL;
        Py_DECREF(metrics);
        if (truth < 0 || (truth > 0 && r == NULL))
            goto out;
        Py_XDECREF(r);
    }
    PyObject *route = get_route(processor);
    if (route == NULL)
        goto out;
    PyObject *ending = PySequence_GetItem(route, 2);
    int truth = ending == NULL ? -1 : PyObject_IsTrue(ending);
    Py_XDECREF(ending);
    if (truth > 0) {
        r = PyObject_CallMethodOneArg(processor, S[S_ON_ENDING], self);
        if (r == NULL)
            truth = -1;
        Py_XDECREF(r);
    }
    if (truth >= 0) {
        PyObject *on_end = PySequence_GetItem(route, 3);
        r = on_end == NULL ? NULL : PyObject_CallOneArg(on_end, self);
        Py_XDECREF(on_end);
        if (r != NULL) {
            Py_DECREF(r);
            status = OK;
        }
    }
    Py_DECREF(route);
out:
    Py_XDECREF(lock);
    Py_XDECREF(attributes);
    Py_XDECREF(processor);
    if (status == DECLINE && PyErr_Occurred())
        status = FAIL;
    return status;
}

static PyObject *
end(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *end_time = Py_None;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    int usual = nargs + nkw <= 1;
    if (usual && nargs == 1)
        end_time = args[0];
    else if (usual && nkw == 1) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, 0);
        usual = kw == S[S_END_TIME_ARG] || (PyUnicode_Check(kw) && PyUnicode_Compare(kw, S[S_END_TIME_ARG]) == 0);
        if (PyErr_Occurred())
            PyErr_Clear();
        end_time = args[0];
    }
    if (usual) {
        int status = end_fast(self, end_time);
        if (status == OK)
            Py_RETURN_NONE;
        if (status == RAISE)
            return NULL;
        if (status == FAIL)
            report_error();
    }
    return call_python(conf[C_PYTHON_END], self, args, nargs, kwnames);
}

/* -- is_recording and update_name ----------------------------------------------------------------------- */

/* Span.is_recording (the SDK's `self._end_time is None`), read from the instance dict; else the Python method */
static PyObject *
is_recording(PyObject *self, PyObject *unused)
{
    if (Py_TYPE(self) == (PyTypeObject *)conf[C_SPAN]) {
        PyObject *ended = SF(self, S_END_TIME);
        if (ended != NULL)
            return PyBool_FromLong(ended == Py_None);
    }
    return call_python(conf[C_PYTHON_IS_RECORDING], self, NULL, 0, NULL);
}

/* Span.update_name: the name set under the span's lock while it is not ended; an ended span (its warning), a
 * span not made as these are, or any other call: the Python method */
static PyObject *
update_name(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs == 1 && Py_TYPE(self) == (PyTypeObject *)conf[C_SPAN]) {
        PyObject *lock = SF(self, S_LOCK);
        if (lock != NULL && Py_TYPE(lock) == (PyTypeObject *)conf[C_LOCK_TYPE]) {
            Py_INCREF(lock);
            PyObject *r = lock_call(lock, OWN_ACQUIRE, &span_locks);
            if (r == NULL) {
                Py_DECREF(lock);
                return NULL;
            }
            Py_DECREF(r);
            int set = SF(self, S_END_TIME) == Py_None;
            PyObject *old = NULL;
            if (set) {
                old = SF(self, S_NAME);  /* released after the lock: its deallocation may run code */
                SF(self, S_NAME) = Py_NewRef(args[0]);
            }
            int released = release_keeping_error(lock);
            Py_DECREF(lock);
            Py_XDECREF(old);
            if (released < 0)
                return NULL;
            if (set)
                Py_RETURN_NONE;
            /* ended (or no _end_time): the Python method says so */
        }
    }
    return call_python(conf[C_PYTHON_UPDATE_NAME], self, args, nargs, NULL);
}

/* -- the module ------------------------------------------------------------------------------------------ */

static PyMethodDef start_span_def = {
    "start_span", (PyCFunction)(void (*)(void))start_span, METH_FASTCALL | METH_KEYWORDS,
    "Tracer.start_span: its fast branches in C (trace_run.agent._span_native), else the Python method."};
static PyMethodDef end_def = {
    "end", (PyCFunction)(void (*)(void))end, METH_FASTCALL | METH_KEYWORDS,
    "Span.end: in C (trace_run.agent._span_native) for a started span of trace-run's, else the Python method."};
static PyMethodDef is_recording_def = {
    "is_recording", is_recording, METH_NOARGS,
    "Span.is_recording: read in C (trace_run.agent._span_native) for a span of trace-run's, else the SDK's."};
static PyMethodDef update_name_def = {
    "update_name", (PyCFunction)(void (*)(void))update_name, METH_FASTCALL,
    "Span.update_name: in C (trace_run.agent._span_native) for a span of trace-run's not ended, else Python's."};
static PyMethodDef set_attribute_def = {
    "set_attribute", (PyCFunction)(void (*)(void))set_attribute, METH_FASTCALL,
    "Span.set_attribute: its fast path in C (trace_run.agent._span_native), else the Python method."};

static PyObject *
configure(PyObject *module, PyObject *names)
{
    if (!PyDict_Check(names)) {
        PyErr_SetString(PyExc_TypeError, "configure() takes a dict");
        return NULL;
    }
    PyObject *got[N_CONF];
    for (int i = 0; i < N_CONF; i++) {
        got[i] = PyDict_GetItemString(names, conf_names[i]);
        if (got[i] == NULL) {
            PyErr_Format(PyExc_KeyError, "configure(): %s missing", conf_names[i]);
            return NULL;
        }
    }
    if (!PyType_Check(got[C_TRACER]) || !PyType_Check(got[C_SPAN]) || !PyType_Check(got[C_MAKER])
        || !PyType_Check(got[C_BOUNDED]) || !PyType_Check(got[C_SPAN_CONTEXT]) || !PyType_Check(got[C_LOCK_TYPE])
        || !PyType_IsSubtype((PyTypeObject *)got[C_SPAN_CONTEXT], &PyTuple_Type)
        || !PyDict_Check(got[C_THREADING_DICT]) || !PyDict_Check(got[C_RANDOM_DICT])
        || !PyDict_Check(got[C_RUNTIME_DICT])) {
        PyErr_SetString(PyExc_TypeError, "configure(): unexpected objects");
        return NULL;
    }
    long flag = -1;
    if (got[C_RANDOM_FLAG] != Py_None) {
        flag = PyLong_AsLong(got[C_RANDOM_FLAG]);
        if (flag == -1 && PyErr_Occurred())
            return NULL;
    }
    int is_enabled = PyObject_IsTrue(got[C_HAS_IS_ENABLED]);
    if (is_enabled < 0)
        return NULL;
    /* the span class's slots: every one named in span_slots, and the fields read here among them */
    PyTypeObject *span_type = (PyTypeObject *)got[C_SPAN];
    PyObject *slots = got[C_SPAN_SLOTS];
    if (!PyTuple_CheckExact(slots) || PyTuple_GET_SIZE(slots) > MAX_SLOTS) {
        PyErr_SetString(PyExc_TypeError, "configure(): span_slots is not a tuple of at most 64 names");
        return NULL;
    }
    Py_ssize_t offsets[MAX_SLOTS], named[N_STR];
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(slots); i++) {
        PyObject *slot = PyTuple_GET_ITEM(slots, i);
        if (!PyUnicode_Check(slot) || (offsets[i] = own_slot_offset(span_type, slot)) < 0) {
            PyErr_Format(PyExc_TypeError, "configure(): %R is not a slot of the span class", slot);
            return NULL;
        }
    }
    PyTypeObject *bounded = (PyTypeObject *)got[C_BOUNDED];
    PyObject *state_names = got[C_ATTRIBUTE_STATE];
    Py_ssize_t a_dict = own_slot_offset(bounded, S[S_SDICT]), a_lock = own_slot_offset(bounded, S[S_LOCK]),
               a_immutable = own_slot_offset(bounded, S[S_IMMUTABLE]), a_state[MAX_ATTRIBUTE_STATE];
    if (a_dict < 0 || a_lock < 0 || a_immutable < 0 || !PyTuple_CheckExact(state_names)
        || PyTuple_GET_SIZE(state_names) > MAX_ATTRIBUTE_STATE) {
        PyErr_SetString(PyExc_TypeError, "configure(): the attributes class's slots are not as read here");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(state_names); i++) {
        PyObject *name = PyTuple_GET_ITEM(state_names, i);
        if (!PyUnicode_Check(name) || (a_state[i] = own_slot_offset(bounded, name)) < 0) {
            PyErr_Format(PyExc_TypeError, "configure(): %R is not a slot of the attributes class", name);
            return NULL;
        }
    }
    Py_ssize_t maker_named[N_STR];
    for (int k = 0; k < N_STR; k++)
        maker_named[k] = -1;
    for (int i = 0; i < N_MAKER_FIELDS; i++) {
        int k = maker_fields[i];
        if ((maker_named[k] = own_slot_offset((PyTypeObject *)got[C_MAKER], S[k])) < 0) {
            PyErr_Format(PyExc_TypeError, "configure(): %R is not a slot of the attribute maker", S[k]);
            return NULL;
        }
    }
    for (int k = 0; k < N_STR; k++) {
        named[k] = -1;
        if ((k >= S_NAME && k <= S_RECORD_END_METRICS) || k == S_END_TIME || k == S_MAKER) {
            if ((named[k] = own_slot_offset(span_type, S[k])) < 0) {
                PyErr_Format(PyExc_TypeError, "configure(): %R is not a slot of the span class", S[k]);
                return NULL;
            }
        }
    }
    /* NonRecordingSpan made without its call (non_recording) only where its __init__ is the function fastspan
     * checked (and it is the class's now); its code held: compared by identity at each call */
    PyObject *init = got[C_NON_RECORDING_INIT], *init_code = NULL;
    if (init != Py_None) {
        if (!PyType_Check(got[C_NON_RECORDING]) || !PyFunction_Check(init)
            || _PyType_Lookup((PyTypeObject *)got[C_NON_RECORDING], S[S_INIT]) != init) {
            PyErr_SetString(PyExc_TypeError, "configure(): non_recording_init is not the class's __init__");
            return NULL;
        }
        init_code = PyFunction_GET_CODE(init);
    }
    PyObject *start = PyDescr_NewMethod((PyTypeObject *)got[C_TRACER], &start_span_def);
    if (start == NULL)
        return NULL;
    PyObject *set = PyDescr_NewMethod((PyTypeObject *)got[C_SPAN], &set_attribute_def);
    PyObject *end_method = PyDescr_NewMethod((PyTypeObject *)got[C_SPAN], &end_def);
    PyObject *recording = PyDescr_NewMethod((PyTypeObject *)got[C_SPAN], &is_recording_def);
    PyObject *rename = PyDescr_NewMethod((PyTypeObject *)got[C_SPAN], &update_name_def);
    if (set == NULL || end_method == NULL || recording == NULL || rename == NULL) {
        Py_DECREF(start);
        Py_XDECREF(set);
        Py_XDECREF(end_method);
        Py_XDECREF(recording);
        Py_XDECREF(rename);
        return NULL;
    }
    for (int i = 0; i < N_CONF; i++) {
        Py_INCREF(got[i]);
        Py_XSETREF(conf[i], got[i]);
    }
    Py_XINCREF(init_code);
    Py_XSETREF(non_recording_code, init_code);
    random_flag = flag;
    has_is_enabled = is_enabled;
    memcpy(span_off, named, sizeof(named));
    memcpy(maker_off, maker_named, sizeof(maker_named));
    attributes_dict_off = a_dict;
    attributes_lock_off = a_lock;
    attributes_immutable_off = a_immutable;
    n_attribute_state = PyTuple_GET_SIZE(state_names);
    memcpy(attributes_state_off, a_state, sizeof(a_state));
    n_slots = PyTuple_GET_SIZE(slots);
    memcpy(slot_off, offsets, (size_t)n_slots * sizeof(Py_ssize_t));
    configured = 1;
    return Py_BuildValue("(NNNNN)", start, set, end_method, recording, rename);
}

static PyObject *
fail(PyObject *module, PyObject *n)
{
    long v = PyLong_AsLong(n);
    if (v == -1 && PyErr_Occurred())
        return NULL;
    fail_next = (int)v;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_O,
     "configure(names: dict) -> (start_span, set_attribute, end, is_recording, update_name) method descriptors for "
     "fastspan's classes."},
    {"_fail", fail, METH_O, "Tests: the next n calls fail inside (the Python method then runs)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_span_native",
                                        "fastspan's start_span and set_attribute fast paths in C.", -1,
                                        module_methods};

PyMODINIT_FUNC
PyInit__span_native(void)
{
    for (int i = 0; i < N_STR; i++) {
        if (S[i] == NULL && (S[i] = PyUnicode_InternFromString(str_values[i])) == NULL)
            return NULL;
    }
    for (int i = 0; i < N_PARAMS; i++) {
        if (param_str[i] == NULL && (param_str[i] = PyUnicode_InternFromString(param_names[i])) == NULL)
            return NULL;
    }
    if (bits128 == NULL && (bits128 = PyLong_FromLong(128)) == NULL)
        return NULL;
    if (bits64 == NULL && (bits64 = PyLong_FromLong(64)) == NULL)
        return NULL;
    if (kw_parent_context == NULL && (kw_parent_context = PyTuple_Pack(1, S[S_PARENT_CONTEXT])) == NULL)
        return NULL;
    if (own_attr_init() < 0)
        return NULL;
    return PyModule_Create(&module_def);
}
