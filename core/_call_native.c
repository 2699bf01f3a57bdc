/* The instrumentors' common call path in C: what runs around every traced library call.
 *
 * A traced call's Python was, before any library-specific work: is instrumentation suppressed here, is the
 * current trace one that is not sampled (runtime_context.unsampled_in, base.instrumentation_enabled_in), the
 * span made current (runtime_context.with_span, attach), the wrapped call run inside it and the span ended
 * (spans.wrapper's wrapper_sync, call_in_span, _after, runtime_context.detach): ~80 bytecodes a call, a few
 * hundred a request. These functions do the same in C, with the same objects, and are swapped in for the
 * Python ones by runtime_context, base and spans where the extension was built and OTEL_TRACE_RUN_NATIVE_CALLS
 * is on; tests/test_call_native.py runs both through the same cases.
 *
 * Everything the Python code would call, this calls, at the same point and with the same arguments: the
 * library's start/end/fail, the guard's `failed`, the program's own wrapped callable (whose exception object
 * propagates unchanged, raised again with its traceback), a span's `end`. A case the C was not written for
 * (a context that is not the API's Context, a span class not checked, another runtime context) goes to the
 * Python function kept beside it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "own_attr.h"

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
    C_VAR, C_GET_CURRENT, C_API_DETACH, C_SPAN_KEY, C_SUPPRESS_KEY, C_SUPPRESS_PLAIN, C_HTTP_KEY, C_CONTEXT,
    C_SPAN_CONTEXT, C_CONTEXT_IS_TUPLE, C_CONTEXT_FIELD_TYPES, C_SPAN_TYPES, C_INVALID_SPAN, C_CHECKED_SPAN,
    C_PY_UNSAMPLED_IN, C_PY_WITH_SPAN, N_CONF
};
static const char *conf_names[N_CONF] = {
    "var", "get_current", "api_detach", "span_key", "suppress_key", "suppress_plain", "http_key", "context",
    "span_context", "context_is_tuple", "context_field_types", "span_types", "invalid_span", "checked_span",
    "py_unsampled_in", "py_with_span"};
static PyObject *conf[N_CONF];
static int configured;
static const int ctx_memo_keys[] = {C_SPAN_KEY, C_SUPPRESS_KEY, C_SUPPRESS_PLAIN, C_HTTP_KEY};
#define N_CTX_MEMO ((int)(sizeof(ctx_memo_keys) / sizeof(ctx_memo_keys[0])))
static OwnMemo ctx_memo[N_CTX_MEMO];  /* context_get's, by key */
static int context_is_tuple;

static PyObject *str_context, *str_end, *str_failed, *str_instrumented, *one;

/* -- the current context --------------------------------------------------------------------------------- */

/* the current Context: the runtime context's ContextVar read directly, or its get_current where it is another */
static PyObject *
current(void)
{
    if (conf[C_VAR] != Py_None) {
        PyObject *value;
        if (PyContextVar_Get(conf[C_VAR], NULL, &value) < 0)
            return NULL;
        if (value != NULL)
            return value;
    }
    return PyObject_CallNoArgs(conf[C_GET_CURRENT]);
}

/* ctx.get(key) as a borrowed reference (NULL: absent, or an error set) for the API's Context (a dict
 * subclass, its `get` dict's); *plain = 0 where ctx is something else */
static PyObject *
context_get(PyObject *ctx, PyObject *key, int *plain)
{
    if (conf[C_CONTEXT] == Py_None || Py_TYPE(ctx) != (PyTypeObject *)conf[C_CONTEXT]) {
        *plain = 0;
        return NULL;
    }
    *plain = 1;
    /* (a request's context is asked for the same keys by each call it makes: kept while it is unchanged, as a
     * Context is; own_attr.h's memo) */
    for (int i = 0; i < N_CTX_MEMO; i++)
        if (key == conf[ctx_memo_keys[i]])
            return own_memo_get(ctx, key, &ctx_memo[i]);
    return PyDict_GetItemWithError(ctx, key);
}

/* `ctx.get(key)` for any context (a new reference, None where absent) */
static PyObject *
context_get_any(PyObject *ctx, PyObject *key)
{
    int plain;
    PyObject *v = context_get(ctx, key, &plain);
    if (plain) {
        if (v == NULL && PyErr_Occurred())
            return NULL;
        return Py_NewRef(v == NULL ? Py_None : v);
    }
    return PyObject_CallMethod(ctx, "get", "O", key);
}

/* base.instrumentation_enabled_in: not (ctx.get(SUPPRESS) or ctx.get("suppress_instrumentation")); -1 on error */
static int
enabled_in_c(PyObject *ctx)
{
    PyObject *keys[2] = {conf[C_SUPPRESS_KEY], conf[C_SUPPRESS_PLAIN]};
    for (int i = 0; i < 2; i++) {
        PyObject *v = context_get_any(ctx, keys[i]);
        if (v == NULL)
            return -1;
        int truth = PyObject_IsTrue(v);
        Py_DECREF(v);
        if (truth != 0)
            return truth < 0 ? -1 : 0;
    }
    return 1;
}

/* runtime_context.unsampled_in: 1, 0, or -1 on error */
static int
unsampled_in_c(PyObject *ctx)
{
    int plain;
    PyObject *span = context_get(ctx, conf[C_SPAN_KEY], &plain);
    if (!plain)
        goto python;
    if (span == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (span == Py_None)
        return 0;
    int known = PySet_Contains(conf[C_CONTEXT_FIELD_TYPES], (PyObject *)Py_TYPE(span));
    if (known < 0)
        return -1;
    if (!known)
        goto python;
    Py_INCREF(span);  /* (borrowed from the context: held while its attribute is read) */
    PyObject *sc = PyObject_GetAttr(span, str_context);
    Py_DECREF(span);
    if (sc == NULL)
        return -1;
    if (!context_is_tuple || Py_TYPE(sc) != (PyTypeObject *)conf[C_SPAN_CONTEXT] || PyTuple_GET_SIZE(sc) != 6) {
        Py_DECREF(sc);
        goto python;
    }
    int valid = PyObject_IsTrue(PyTuple_GET_ITEM(sc, 5));
    if (valid <= 0) {
        Py_DECREF(sc);
        return valid;
    }
    PyObject *bit = PyNumber_And(PyTuple_GET_ITEM(sc, 3), one);
    Py_DECREF(sc);
    if (bit == NULL)
        return -1;
    int sampled = PyObject_IsTrue(bit);
    Py_DECREF(bit);
    return sampled < 0 ? -1 : !sampled;
python:;
    PyObject *r = PyObject_CallOneArg(conf[C_PY_UNSAMPLED_IN], ctx);
    if (r == NULL)
        return -1;
    int truth = PyObject_IsTrue(r);
    Py_DECREF(r);
    return truth;
}

static int
check_configured(void)
{
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "trace_run.core._call_native is not configured");
        return -1;
    }
    return 0;
}

static PyObject *
as_bool(int v)
{
    if (v < 0)
        return NULL;
    return Py_NewRef(v ? Py_True : Py_False);
}

static PyObject *
enabled_in(PyObject *module, PyObject *ctx)
{
    if (check_configured() < 0)
        return NULL;
    return as_bool(enabled_in_c(ctx));
}

static PyObject *
unsampled_in(PyObject *module, PyObject *ctx)
{
    if (check_configured() < 0)
        return NULL;
    return as_bool(unsampled_in_c(ctx));
}

/* base.is_http_instrumentation_enabled */
static PyObject *
http_enabled(PyObject *module, PyObject *unused)
{
    if (check_configured() < 0)
        return NULL;
    PyObject *ctx = current();
    if (ctx == NULL)
        return NULL;
    int on = enabled_in_c(ctx);
    if (on > 0) {
        PyObject *v = context_get_any(ctx, conf[C_HTTP_KEY]);
        if (v == NULL) {
            on = -1;
        } else {
            int truth = PyObject_IsTrue(v);
            Py_DECREF(v);
            on = truth < 0 ? -1 : !truth;
        }
    }
    Py_DECREF(ctx);
    return as_bool(on);
}

/* dbapi.client_active: instrumented, not suppressed, not in a trace that is not sampled */
static PyObject *
client_active(PyObject *module, PyObject *instrumentor)
{
    if (check_configured() < 0)
        return NULL;
    PyObject *flag = PyObject_GetAttr(instrumentor, str_instrumented);
    if (flag == NULL)
        return NULL;
    int on = PyObject_IsTrue(flag);
    Py_DECREF(flag);
    if (on <= 0)
        return as_bool(on);
    PyObject *ctx = current();
    if (ctx == NULL)
        return NULL;
    on = enabled_in_c(ctx);
    if (on > 0) {
        int unsampled = unsampled_in_c(ctx);
        on = unsampled < 0 ? -1 : !unsampled;
    }
    Py_DECREF(ctx);
    return as_bool(on);
}

/* runtime_context.span_in's answer for a span read from a context (a borrowed `span`, NULL: absent) */
static PyObject *
checked(PyObject *span)
{
    if (span == NULL || span == Py_None)
        return Py_NewRef(conf[C_INVALID_SPAN]);
    int known = PySet_Contains(conf[C_SPAN_TYPES], (PyObject *)Py_TYPE(span));
    if (known < 0)
        return NULL;
    if (known)
        return Py_NewRef(span);
    return PyObject_CallOneArg(conf[C_CHECKED_SPAN], span);
}

static PyObject *
span_in(PyObject *module, PyObject *ctx)
{
    if (check_configured() < 0)
        return NULL;
    PyObject *span = context_get_any(ctx, conf[C_SPAN_KEY]);
    if (span == NULL)
        return NULL;
    PyObject *r = checked(span);
    Py_DECREF(span);
    return r;
}

static PyObject *
current_span(PyObject *module, PyObject *unused)
{
    if (check_configured() < 0)
        return NULL;
    PyObject *ctx = current();
    if (ctx == NULL)
        return NULL;
    PyObject *r = span_in(module, ctx);
    Py_DECREF(ctx);
    return r;
}

/* runtime_context.with_span(span, context=None, key=None, value=None) */
static PyObject *
with_span(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *names[4] = {"span", "context", "key", "value"};
    PyObject *given[4] = {NULL, Py_None, Py_None, Py_None};
    if (check_configured() < 0)
        return NULL;
    if (conf[C_CONTEXT] == Py_None)  /* another Context class: the API's way */
        return PyObject_Vectorcall(conf[C_PY_WITH_SPAN], args, nargs, kwnames);
    if (nargs > 4) {
        PyErr_Format(PyExc_TypeError, "with_span() takes at most 4 arguments (%zd given)", nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        given[i] = args[i];
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int i = 0;
        while (i < 4 && PyUnicode_CompareWithASCIIString(name, names[i]) != 0)
            i++;
        if (i == 4 || i < nargs) {
            PyErr_Format(PyExc_TypeError, i == 4 ? "with_span() got an unexpected keyword argument '%U'"
                                                 : "with_span() got multiple values for argument '%U'", name);
            return NULL;
        }
        given[i] = args[nargs + k];
    }
    if (given[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "with_span() missing 1 required argument: 'span'");
        return NULL;
    }
    PyObject *parent = given[1] == Py_None ? current() : Py_NewRef(given[1]);
    if (parent == NULL)
        return NULL;
    /* Context(parent): for a dict, dict.__init__ merges it after looking `parent.keys` up (a lookup through the
     * type, and an entry of the type attribute cache, every call); the merge alone where Context's __new__ and
     * __init__ are still dict's */
    PyTypeObject *kind = (PyTypeObject *)conf[C_CONTEXT];
    PyObject *new;
    if (PyDict_Check(parent) && kind->tp_init == PyDict_Type.tp_init && kind->tp_new == PyDict_Type.tp_new) {
        new = PyObject_CallNoArgs((PyObject *)kind);
        if (new != NULL && PyDict_Merge(new, parent, 1) < 0)
            Py_CLEAR(new);
    }
    else
        new = PyObject_CallOneArg((PyObject *)kind, parent);
    Py_DECREF(parent);
    if (new == NULL)
        return NULL;
    if (PyDict_SetItem(new, conf[C_SPAN_KEY], given[0]) < 0
        || (given[2] != Py_None && PyDict_SetItem(new, given[2], given[3]) < 0)) {
        Py_DECREF(new);
        return NULL;
    }
    return new;
}

/* runtime_context.detach: the ContextVar reset, the API's detach where that fails (it logs why); 0 or -1 */
static int
detach_c(PyObject *token)
{
    if (conf[C_VAR] != Py_None && PyContextToken_CheckExact(token)) {
        if (PyContextVar_Reset(conf[C_VAR], token) == 0)
            return 0;
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return -1;
        PyErr_Clear();
    }
    PyObject *r = PyObject_CallOneArg(conf[C_API_DETACH], token);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *
detach(PyObject *module, PyObject *token)
{
    if (check_configured() < 0 || detach_c(token) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* -- the wrapped call ----------------------------------------------------------------------------------- */

/* `except Exception as exc: guard.failed(exc)` for the error set: 0 where it was handled, -1 where it
 * propagates (not an Exception, or `failed` raised) */
static int
guard_failed(PyObject *guard)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    if (tb != NULL)
        PyException_SetTraceback(ev, tb);
    PyObject *r = PyObject_CallMethodOneArg(guard, str_failed, ev);
    Py_XDECREF(et);
    Py_XDECREF(ev);
    Py_XDECREF(tb);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* spans._after: detach `token`, then under the guard finish(span, outcome), or span.end() when `finish` is
 * None; 0, or -1 with the error that propagates */
static int
after(PyObject *guard, PyObject *span, PyObject *token, PyObject *finish, PyObject *outcome)
{
    if (token != Py_None && detach_c(token) < 0)
        return -1;
    if (span == Py_None)
        return 0;
    PyObject *r = finish == Py_None ? PyObject_CallMethodNoArgs(span, str_end)
                                    : PyObject_CallFunctionObjArgs(finish, span, outcome, NULL);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    return guard_failed(guard);
}

/* wrapped(*args, **kwargs): args any iterable, kwargs any mapping, as the call syntax takes them */
static PyObject *
call_star(PyObject *wrapped, PyObject *args, PyObject *kwargs)
{
    PyObject *call_args = PyTuple_CheckExact(args) ? Py_NewRef(args) : PySequence_Tuple(args);
    if (call_args == NULL)
        return NULL;
    PyObject *call_kwargs = NULL;
    if (PyDict_CheckExact(kwargs)) {
        call_kwargs = Py_NewRef(kwargs);
    } else if ((call_kwargs = PyDict_New()) == NULL || PyDict_Update(call_kwargs, kwargs) < 0) {
        Py_DECREF(call_args);
        Py_XDECREF(call_kwargs);
        return NULL;
    }
    PyObject *result = PyObject_Call(wrapped, call_args, call_kwargs);
    Py_DECREF(call_args);
    Py_DECREF(call_kwargs);
    return result;
}

/* spans.call_in_span: wrapped(*args, **kwargs) as the work of `span`, ended by after() either way */
static PyObject *
call_in_span_c(PyObject *guard, PyObject *span, PyObject *token, PyObject *wrapped, PyObject *args,
               PyObject *kwargs, PyObject *fail, PyObject *end)
{
    PyObject *result = call_star(wrapped, args, kwargs);
    if (result != NULL) {
        if (after(guard, span, token, end, result) < 0) {
            Py_DECREF(result);
            return NULL;
        }
        return result;
    }
    /* the program's exception: after() runs with it as the one being handled (sys.exc_info(), as in the
     * Python `except` block), then it is raised again, the same object */
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    if (tb != NULL)
        PyException_SetTraceback(ev, tb);
    PyObject *ht, *hv, *htb;
    PyErr_GetExcInfo(&ht, &hv, &htb);
    Py_INCREF(et);
    Py_INCREF(ev);
    Py_XINCREF(tb);
    PyErr_SetExcInfo(et, ev, tb);
    /* an error of after()'s own replaces it (raised while it is the one handled: it is that error's context) */
    int done = after(guard, span, token, fail, ev);
    PyErr_SetExcInfo(ht, hv, htb);
    if (done < 0) {
        Py_DECREF(et);
        Py_DECREF(ev);
        Py_XDECREF(tb);
        return NULL;
    }
    PyErr_Restore(et, ev, tb);
    return NULL;
}

static PyObject *
call_in_span(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (check_configured() < 0)
        return NULL;
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0) {
        PyErr_SetString(PyExc_TypeError, "call_in_span() takes positional arguments only");
        return NULL;
    }
    if (nargs != 7 && nargs != 8) {
        PyErr_Format(PyExc_TypeError, "call_in_span() takes 7 or 8 arguments (%zd given)", nargs);
        return NULL;
    }
    return call_in_span_c(args[0], args[1], args[2], args[3], args[4], args[5], args[6],
                          nargs == 8 ? args[7] : Py_None);
}

/* Runner: spans.wrapper's wrapper_sync, a callable (wrapped, instance, args, kwargs) */
typedef struct {
    PyObject_HEAD
    PyObject *guard, *start, *fail, *end, *enabled;
    vectorcallfunc vectorcall;
} Runner;

static PyObject *
runner_vectorcall(Runner *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 4 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "a span wrapper takes (wrapped, instance, args, kwargs)");
        return NULL;
    }
    if (check_configured() < 0)
        return NULL;
    PyObject *wrapped = args[0], *instance = args[1], *call_args = args[2], *call_kwargs = args[3];
    PyObject *started = NULL;
    int on = 1;
    if (self->enabled != Py_None) {
        PyObject *r = PyObject_CallNoArgs(self->enabled);
        if (r == NULL)
            return NULL;
        on = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (on < 0)
            return NULL;
    }
    if (on) {
        started = PyObject_CallFunctionObjArgs(self->start, instance, call_args, call_kwargs, NULL);
        if (started == NULL && guard_failed(self->guard) < 0)
            return NULL;
    }
    if (started == NULL || started == Py_None) {
        Py_XDECREF(started);
        return call_star(wrapped, call_args, call_kwargs);
    }
    PyObject *parts = PyTuple_CheckExact(started) ? Py_NewRef(started) : PySequence_Tuple(started);
    Py_DECREF(started);
    if (parts == NULL)
        return NULL;
    if (PyTuple_GET_SIZE(parts) != 4) {
        Py_ssize_t n = PyTuple_GET_SIZE(parts);
        if (n > 4)
            PyErr_SetString(PyExc_ValueError, "too many values to unpack (expected 4)");
        else
            PyErr_Format(PyExc_ValueError, "not enough values to unpack (expected 4, got %zd)", n);
        Py_DECREF(parts);
        return NULL;
    }
    PyObject *result = call_in_span_c(self->guard, PyTuple_GET_ITEM(parts, 0), PyTuple_GET_ITEM(parts, 1),
                                      wrapped, PyTuple_GET_ITEM(parts, 2), PyTuple_GET_ITEM(parts, 3),
                                      self->fail, self->end);
    Py_DECREF(parts);
    return result;
}

static PyObject *
runner_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"guard", "start", "fail", "end", "enabled", NULL};
    PyObject *guard, *start, *fail, *end = Py_None, *enabled = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OO:Runner", kwlist, &guard, &start, &fail, &end,
                                     &enabled))
        return NULL;
    Runner *self = (Runner *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->guard = Py_NewRef(guard);
    self->start = Py_NewRef(start);
    self->fail = Py_NewRef(fail);
    self->end = Py_NewRef(end);
    self->enabled = Py_NewRef(enabled);
    self->vectorcall = (vectorcallfunc)runner_vectorcall;
    return (PyObject *)self;
}

static int
runner_traverse(Runner *self, visitproc visit, void *arg)
{
    Py_VISIT(self->guard);
    Py_VISIT(self->start);
    Py_VISIT(self->fail);
    Py_VISIT(self->end);
    Py_VISIT(self->enabled);
    return 0;
}

static int
runner_clear(Runner *self)
{
    Py_CLEAR(self->guard);
    Py_CLEAR(self->start);
    Py_CLEAR(self->fail);
    Py_CLEAR(self->end);
    Py_CLEAR(self->enabled);
    return 0;
}

static void
runner_dealloc(Runner *self)
{
    PyObject_GC_UnTrack(self);
    runner_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
runner_repr(Runner *self)
{
    return PyUnicode_FromFormat("<trace_run span wrapper start=%R>", self->start);
}

static PyMemberDef runner_members[] = {
    {"guard", T_OBJECT, offsetof(Runner, guard), READONLY, NULL},
    {"start", T_OBJECT, offsetof(Runner, start), READONLY, NULL},
    {"fail", T_OBJECT, offsetof(Runner, fail), READONLY, NULL},
    {"end", T_OBJECT, offsetof(Runner, end), READONLY, NULL},
    {"enabled", T_OBJECT, offsetof(Runner, enabled), READONLY, NULL},
    {NULL}};

static PyTypeObject RunnerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trace_run.core._call_native.Runner",
    .tp_doc = "Runner(guard, start, fail, end=None, enabled=None): spans.wrapper's sync wrapper, in C.",
    .tp_basicsize = sizeof(Runner),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = runner_new,
    .tp_dealloc = (destructor)runner_dealloc,
    .tp_traverse = (traverseproc)runner_traverse,
    .tp_clear = (inquiry)runner_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Runner, vectorcall),
    .tp_repr = (reprfunc)runner_repr,
    .tp_members = runner_members,
};

/* -- configure ------------------------------------------------------------------------------------------- */

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
            PyErr_Format(PyExc_KeyError, "configure() needs %s", conf_names[i]);
            return NULL;
        }
    }
    if (got[C_VAR] != Py_None && !PyContextVar_CheckExact(got[C_VAR])) {
        PyErr_SetString(PyExc_TypeError, "var: a ContextVar or None");
        return NULL;
    }
    if (!PyAnySet_Check(got[C_CONTEXT_FIELD_TYPES]) || !PyAnySet_Check(got[C_SPAN_TYPES])) {
        PyErr_SetString(PyExc_TypeError, "context_field_types, span_types: sets");
        return NULL;
    }
    if ((got[C_CONTEXT] != Py_None && !(PyType_Check(got[C_CONTEXT])
                                        && PyType_IsSubtype((PyTypeObject *)got[C_CONTEXT], &PyDict_Type)))
        || !PyType_Check(got[C_SPAN_CONTEXT])) {
        PyErr_SetString(PyExc_TypeError, "context: a dict subclass or None; span_context: a type");
        return NULL;
    }
    int is_tuple = PyObject_IsTrue(got[C_CONTEXT_IS_TUPLE]);
    if (is_tuple < 0)
        return NULL;
    for (int i = 0; i < N_CONF; i++)
        Py_XSETREF(conf[i], Py_NewRef(got[i]));
    context_is_tuple = is_tuple;
    configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_O, "configure(names: dict): the objects the functions compare with or call."},
    {"enabled_in", enabled_in, METH_O, "base.instrumentation_enabled_in(ctx)."},
    {"unsampled_in", unsampled_in, METH_O, "runtime_context.unsampled_in(ctx)."},
    {"http_enabled", http_enabled, METH_NOARGS, "base.is_http_instrumentation_enabled()."},
    {"client_active", client_active, METH_O, "dbapi.client_active(instrumentor)."},
    {"span_in", span_in, METH_O, "runtime_context.span_in(ctx)."},
    {"current_span", current_span, METH_NOARGS, "runtime_context.current_span()."},
    {"with_span", (PyCFunction)(void (*)(void))with_span, METH_FASTCALL | METH_KEYWORDS,
     "runtime_context.with_span(span, context=None, key=None, value=None)."},
    {"detach", detach, METH_O, "runtime_context.detach(token)."},
    {"call_in_span", (PyCFunction)(void (*)(void))call_in_span, METH_FASTCALL | METH_KEYWORDS,
     "spans.call_in_span(guard, span, token, wrapped, args, kwargs, fail, end=None)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_call_native",
                                        "The instrumentors' common call path in C.", -1, module_methods};

PyMODINIT_FUNC
PyInit__call_native(void)
{
    if ((str_context == NULL && (str_context = PyUnicode_InternFromString("_context")) == NULL)
        || (str_end == NULL && (str_end = PyUnicode_InternFromString("end")) == NULL)
        || (str_failed == NULL && (str_failed = PyUnicode_InternFromString("failed")) == NULL)
        || (str_instrumented == NULL
            && (str_instrumented = PyUnicode_InternFromString("_is_instrumented_by_opentelemetry")) == NULL)
        || (one == NULL && (one = PyLong_FromLong(1)) == NULL))
        return NULL;
    if (PyType_Ready(&RunnerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RunnerType);
    if (PyModule_AddObject(m, "Runner", (PyObject *)&RunnerType) < 0) {
        Py_DECREF(&RunnerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
