/* wsgi.server_attributes in C: the SERVER span's name and attributes of a WSGI request, for its common case.
 *
 * Every sampled request reads its method, scheme, path, query, host, client, user agent and protocol from the
 * environ: ~160 Python bytecodes in wsgi.server_attributes and _peer_attributes (with the peer attributes
 * already kept by their environ values). This does the same steps with the same objects, in the same order
 * (the attributes' order is the encoded span's): a known method given as a str, an ASCII path within the
 * value bound, the kept peer attributes found by the same key. For the rest it calls the same Python steps
 * wsgi.server_attributes calls (its query, peer and header-capture helpers, bounds.limit, capture); a request
 * it was not written for (another method, a non-ASCII or long path, an environ that is not a dict, ...)
 * goes to wsgi.python_server_attributes whole. tests/instrumentors/http/test_wsgi_native.py compares both.
 *
 * wsgi.handle in C, and the base of its per-request state (wsgi._Request's fields): every request, sampled or
 * not, ran ~100 bytecodes of handle and ~80 more in the steps it calls (extract, start_server_span,
 * start_span_deferred, _Request.__init__). This makes the same calls in the same order; the steps that are
 * rare or long (a traceparent to extract, another tracer class, the exclusions, a failed request) call the
 * same Python functions. tests/instrumentors/http/test_wsgi_handle_native.py runs both through the same cases.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include "../core/own_attr.h"

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
Py_NewRef(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
#endif

enum {
    C_KNOWN, C_PEERS, C_LIMIT, C_CAPTURE, C_PYTHON, C_QUERY_INTO, C_PEER_INTO, C_CAPTURE_INTO, C_METHOD_KEY,
    C_SCHEME_KEY, C_PATH_KEY, C_TRUNCATED, C_CONFIG_CACHE, C_LIMIT_KEY, C_SETTINGS, C_CAPTURE_KEY, N_CONF
};
static const char *conf_names[N_CONF] = {
    "known", "peers", "limit", "capture", "python", "query_into", "peer_into", "capture_into", "method_key",
    "scheme_key", "path_key", "truncated", "config_cache", "limit_key", "settings", "capture_key"};
static PyObject *conf[N_CONF];
static int configured;

enum {
    S_REQUEST_METHOD, S_EMPTY, S_URL_SCHEME, S_HTTP, S_SCRIPT_NAME, S_PATH_INFO, S_SLASH, S_QUERY_STRING,
    S_HTTP_HOST, S_SERVER_NAME, S_SERVER_PORT, S_X_FORWARDED_FOR, S_REMOTE_ADDR, S_USER_AGENT, S_SERVER_PROTOCOL,
    S_SERVER_REQUEST, N_STR
};
static const char *str_values[N_STR] = {
    "REQUEST_METHOD", "", "wsgi.url_scheme", "http", "SCRIPT_NAME", "PATH_INFO", "/", "QUERY_STRING",
    "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "HTTP_X_FORWARDED_FOR", "REMOTE_ADDR", "HTTP_USER_AGENT",
    "SERVER_PROTOCOL", "SERVER_REQUEST"};
static PyObject *S[N_STR];
/* the environ keys of the peer attributes' key, in wsgi._peer_attributes' order */
static const int peer_keys[7] = {S_HTTP_HOST, S_SERVER_NAME, S_SERVER_PORT, S_X_FORWARDED_FOR, S_REMOTE_ADDR,
                                 S_USER_AGENT, S_SERVER_PROTOCOL};

#define DECLINE ((PyObject *)1)

/* fn(arg...)'s answer where it keeps it in `kept` under `key` (bounds.limit in config's cache, http_common.capture
 * in its settings: a dict lookup, not a call); else the call (a new reference) */
static PyObject *
kept_or_call(PyObject *kept, PyObject *key, PyObject *fn, PyObject *arg)
{
    PyObject *v = PyDict_GetItemWithError(kept, key);
    if (v != NULL)
        return Py_NewRef(v);
    if (PyErr_Occurred())
        return NULL;
    return arg == NULL ? PyObject_CallNoArgs(fn) : PyObject_CallOneArg(fn, arg);
}

/* environ.get(key, fallback) as a borrowed reference; NULL with an error set */
static PyObject *
get(PyObject *environ, int key, PyObject *fallback)
{
    PyObject *v = PyDict_GetItemWithError(environ, S[key]);
    if (v == NULL && !PyErr_Occurred())
        return fallback;
    return v;
}

static int
call_into(int which, PyObject *a, PyObject *b, PyObject *c)
{
    PyObject *r = PyObject_CallFunctionObjArgs(conf[which], a, b, c, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The last peer key looked up in wsgi._PEERS and what it found there: a request whose key's items equal those
 * (the same objects, or str / int of the same value: what the tuple's == and hash see) finds the same entry, as
 * long as _PEERS has not changed since (its version tag: any store, delete or clear changes it), without the
 * key's hash (its str items are new objects per request under a real server: each hashed anew) and the lookup's
 * compare. Where the tag is not there to read (3.12 deprecates it), every request looks up. */
#if PY_VERSION_HEX < 0x030C0000
#define PEER_MEMO 1
static PyObject *memo_key, *memo_found, *memo_peers;  /* (held) */
static uint64_t memo_version;

static int
same_item(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    PyTypeObject *t = Py_TYPE(a);
    if (t != Py_TYPE(b))
        return 0;
    if (t == &PyUnicode_Type) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(a);
        return n == PyUnicode_GET_LENGTH(b) && PyUnicode_KIND(a) == PyUnicode_KIND(b)
               && memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), n * PyUnicode_KIND(a)) == 0;
    }
    if (t == &PyLong_Type)
        return PyObject_RichCompareBool(a, b, Py_EQ) == 1;  /* (two ints: no code of the program's runs) */
    return 0;
}

/* `found` of the memo (borrowed) where key (a new 8-tuple) finds it; NULL: look up */
static PyObject *
peer_memo_found(PyObject *key)
{
    if (memo_key == NULL || memo_peers != conf[C_PEERS]
        || ((PyDictObject *)memo_peers)->ma_version_tag != memo_version)
        return NULL;
    for (int i = 0; i < 8; i++)
        if (!same_item(PyTuple_GET_ITEM(key, i), PyTuple_GET_ITEM(memo_key, i))) {
            PyErr_Clear();
            return NULL;
        }
    return memo_found;
}

/* kept where every item of the key is None, an exact str or an exact int (their == and hash are their value's) */
static void
peer_memo_keep(PyObject *key, PyObject *found)
{
    if (!PyDict_CheckExact(conf[C_PEERS]))
        return;
    for (int i = 0; i < 8; i++) {
        PyObject *v = PyTuple_GET_ITEM(key, i);
        if (v != Py_None && !PyUnicode_CheckExact(v) && !PyLong_CheckExact(v))
            return;
    }
    Py_INCREF(key);
    Py_XSETREF(memo_key, key);
    Py_INCREF(found);
    Py_XSETREF(memo_found, found);
    Py_INCREF(conf[C_PEERS]);
    Py_XSETREF(memo_peers, conf[C_PEERS]);
    memo_version = ((PyDictObject *)memo_peers)->ma_version_tag;
}
#else
#define peer_memo_found(key) ((PyObject *)NULL)
#define peer_memo_keep(key, found) ((void)0)
#endif

/* the common case: (name, attrs), DECLINE before anything was changed, or NULL with an error set. The
 * environ's values it keeps are held (new references): the Python steps it calls could change the environ. */
static PyObject *
attributes(PyObject *environ)
{
    if (!PyDict_CheckExact(environ))
        return DECLINE;
    PyObject *method = get(environ, S_REQUEST_METHOD, S[S_EMPTY]);
    if (method == NULL)
        return NULL;
    if (!PyUnicode_CheckExact(method))
        return DECLINE;
    int known = PySet_Contains(conf[C_KNOWN], method);
    if (known <= 0)
        return known < 0 ? NULL : DECLINE;
    PyObject *script = get(environ, S_SCRIPT_NAME, S[S_EMPTY]), *info = get(environ, S_PATH_INFO, S[S_EMPTY]);
    if (script == NULL || info == NULL)
        return NULL;
    if (!PyUnicode_CheckExact(script) || !PyUnicode_CheckExact(info)
        || !PyUnicode_IS_ASCII(script) || !PyUnicode_IS_ASCII(info))
        return DECLINE;
    PyObject *scheme = get(environ, S_URL_SCHEME, S[S_HTTP]);
    if (scheme == NULL)
        return NULL;
    Py_ssize_t length = PyUnicode_GET_LENGTH(script) + PyUnicode_GET_LENGTH(info);
    PyObject *path = length == 0 ? Py_NewRef(S[S_SLASH]) : PyUnicode_Concat(script, info);
    if (path == NULL)
        return NULL;
    Py_INCREF(method);
    Py_INCREF(scheme);
    PyObject *result = NULL, *attrs = NULL, *key = NULL;
    PyObject *bound = kept_or_call(conf[C_CONFIG_CACHE], conf[C_LIMIT_KEY], conf[C_LIMIT], NULL);
    if (bound == NULL)
        goto done;
    if (bound != Py_None) {
        Py_ssize_t limit = PyLong_CheckExact(bound) ? PyLong_AsSsize_t(bound) : -1;
        if (limit < 0 || PyUnicode_GET_LENGTH(path) > limit) {  /* a path to cut (bounds.put), or odd: Python */
            PyErr_Clear();
            result = DECLINE;
            goto done;
        }
    }
    if ((attrs = PyDict_New()) == NULL || PyDict_SetItem(attrs, conf[C_METHOD_KEY], method) < 0
        || PyDict_SetItem(attrs, conf[C_SCHEME_KEY], scheme) < 0 || PyDict_SetItem(attrs, conf[C_PATH_KEY], path) < 0)
        goto done;
    PyObject *query = get(environ, S_QUERY_STRING, Py_None);
    if (query == NULL)
        goto done;
    Py_INCREF(query);
    int truth = PyObject_IsTrue(query);
    int failed = truth < 0 || (truth && call_into(C_QUERY_INTO, attrs, query, bound) < 0);
    Py_DECREF(query);
    if (failed)
        goto done;
    /* the peer attributes kept by their environ values (wsgi._peer_attributes' key), else worked out there */
    if ((key = PyTuple_New(8)) == NULL)
        goto done;
    for (int i = 0; i < 7; i++) {
        PyObject *v = get(environ, peer_keys[i], Py_None);
        if (v == NULL)
            goto done;
        PyTuple_SET_ITEM(key, i, Py_NewRef(v));
    }
    PyTuple_SET_ITEM(key, 7, Py_NewRef(bound));
    PyObject *found = peer_memo_found(key);
    if (found == NULL) {
        found = PyDict_GetItemWithError(conf[C_PEERS], key);
        if (found == NULL && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError))
                goto done;
            PyErr_Clear();  /* a value that cannot be a key: worked out every time, there */
        }
        else if (found != NULL)
            peer_memo_keep(key, found);
    }
    int cut = 0;
    if (found != NULL && (!PyDict_CheckExact(found) || (cut = PyDict_Contains(found, conf[C_TRUNCATED])) != 0)) {
        if (cut < 0)
            goto done;
        found = NULL;
    }
    if (found != NULL ? PyDict_Update(attrs, found) < 0 : call_into(C_PEER_INTO, attrs, environ, bound) < 0)
        goto done;
    PyObject *cap = kept_or_call(conf[C_SETTINGS], conf[C_CAPTURE_KEY], conf[C_CAPTURE], S[S_SERVER_REQUEST]);
    if (cap == NULL)
        goto done;
    int captured = cap == Py_None ? 0 : call_into(C_CAPTURE_INTO, attrs, cap, environ);
    Py_DECREF(cap);
    if (captured < 0)
        goto done;
    result = PyTuple_Pack(2, method, attrs);
done:
    Py_DECREF(method);
    Py_DECREF(scheme);
    Py_DECREF(path);
    Py_XDECREF(bound);
    Py_XDECREF(attrs);
    Py_XDECREF(key);
    return result;
}

/* configure*()'s first step: got[i] = names[keys[i]] for each of the n keys (borrowed); -1 with the error set */
static int
read_names(const char *fn, PyObject *names, int n, const char **keys, PyObject **got)
{
    if (!PyDict_Check(names)) {
        PyErr_Format(PyExc_TypeError, "%s() takes a dict", fn);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        got[i] = PyDict_GetItemString(names, keys[i]);
        if (got[i] == NULL) {
            PyErr_Format(PyExc_KeyError, "%s() needs %s", fn, keys[i]);
            return -1;
        }
    }
    return 0;
}

/* and its last: the objects kept (references held) */
static void
keep_names(int n, PyObject **got, PyObject **into)
{
    for (int i = 0; i < n; i++)
        Py_XSETREF(into[i], Py_NewRef(got[i]));
}

static PyObject *
server_attributes(PyObject *module, PyObject *environ)
{
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "trace_run.instrumentors._wsgi_native is not configured");
        return NULL;
    }
    Py_INCREF(environ);
    PyObject *r = attributes(environ);
    Py_DECREF(environ);
    if (r == DECLINE)
        return PyObject_CallOneArg(conf[C_PYTHON], environ);
    return r;
}

/* -- wsgi._Request's fields, and wsgi.handle ---------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *span, *ctx, *status, *ended, *recorded, *held_whole;
} Request;

static PyMemberDef request_members[] = {
    {"span", T_OBJECT_EX, offsetof(Request, span), 0, NULL},
    {"ctx", T_OBJECT_EX, offsetof(Request, ctx), 0, NULL},
    {"status", T_OBJECT_EX, offsetof(Request, status), 0, NULL},
    {"ended", T_OBJECT_EX, offsetof(Request, ended), 0, NULL},
    {"recorded", T_OBJECT_EX, offsetof(Request, recorded), 0, NULL},
    {"held_whole", T_OBJECT_EX, offsetof(Request, held_whole), 0, NULL},
    {NULL, 0, 0, 0, NULL}};

static void
request_fill(Request *r, PyObject *span, PyObject *ctx)
{
    Py_XSETREF(r->span, Py_NewRef(span));
    Py_XSETREF(r->ctx, Py_NewRef(ctx));
    Py_XSETREF(r->status, Py_NewRef(Py_None));
    Py_XSETREF(r->ended, Py_NewRef(Py_False));
    Py_XSETREF(r->recorded, Py_NewRef(Py_None));
    Py_XSETREF(r->held_whole, Py_NewRef(Py_False));
}

static int
request_init(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"span", "ctx", NULL};
    PyObject *span, *ctx;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:_Request", names, &span, &ctx))
        return -1;
    request_fill((Request *)self, span, ctx);
    return 0;
}

static int
request_traverse(PyObject *self, visitproc visit, void *arg)
{
    Request *r = (Request *)self;
    Py_VISIT(r->span);
    Py_VISIT(r->ctx);
    Py_VISIT(r->status);
    Py_VISIT(r->ended);
    Py_VISIT(r->recorded);
    Py_VISIT(r->held_whole);
    return 0;
}

static int
request_clear(PyObject *self)
{
    Request *r = (Request *)self;
    Py_CLEAR(r->span);
    Py_CLEAR(r->ctx);
    Py_CLEAR(r->status);
    Py_CLEAR(r->ended);
    Py_CLEAR(r->recorded);
    Py_CLEAR(r->held_whole);
    return 0;
}

static void
request_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    request_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject RequestType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trace_run.instrumentors._wsgi_native.Request",
    .tp_doc = "wsgi._Request's fields (span, ctx, status, ended, recorded, held_whole), made here by handle.",
    .tp_basicsize = sizeof(Request),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = request_init,
    .tp_traverse = request_traverse,
    .tp_clear = request_clear,
    .tp_dealloc = request_dealloc,
    .tp_members = request_members,
};

enum {
    H_PYTHON, H_ENVIRON_KEY, H_ENABLED_IN, H_RUNTIME, H_GLOBALS, H_EXTRACT, H_START_SERVER_SPAN, H_DEFAULT_PAIR,
    H_PROPAGATION, H_PROPAGATE, H_GET_TEXTMAP, H_EMPTY, H_IS_DEFERRED, H_SERVER_KIND, H_NON_RECORDING,
    H_REQUEST, H_GUARD_FAILED, H_END_FAILED, H_TRACED_BODY, H_UNRECORDED_BODY, H_HELD_BODY, N_HCONF
};
static const char *hconf_names[N_HCONF] = {
    "python", "environ_key", "enabled_in", "runtime", "globals", "extract", "start_server_span", "default_pair",
    "propagation", "propagate", "get_global_textmap", "empty", "is_deferred", "server_kind",
    "non_recording", "request", "guard_failed", "end_failed", "traced_body", "unrecorded_body", "held_body"};
static PyObject *hconf[N_HCONF];
static int handle_configured;
static PyObject *known_deferred, *other_deferred;  /* start_span_deferred functions seen: fastspan's, another */

enum {
    N_GET_CURRENT, N_ATTACH, N_DETACH, N_WITH_SPAN, N_EXTRACT, N_START_SERVER_SPAN, N_SERVER_ATTRIBUTES, N_KNOWN,
    N_TEXT_FORMAT, N_GET_TEXTMAP, N_TRACEPARENT, N_BAGGAGE, N_DEFERRED, N_BLIND, N_START_SPAN, N_IS_RECORDING,
    N_START_RESPONSE, N_DEFAULT_PAIR, N_END, N_RECORD, N_RESPONSE, N_SET_ATTRIBUTE, N_CAPTURE_KEY,
    N_SERVER_RESPONSE, N_CTX, N_CLOSE, N_ENDED, N_UPDATE_NAME, N_GUARD, N_FAILED, N_TRACER_FIELD, N_TRACER,
    N_EXCLUDED, N_HANDLE, N_CURRENT_SPAN, N_REQUEST_PROXY, N_GET_CURRENT_OBJECT, N_REQUEST, N_ENVIRON, N_GET,
    N_ENVIRON_KEY, N_URL_RULE, N_SET_ROUTE, N_SPAN, N_REQUEST_METHOD, N_RULE, N_HELD_WHOLE_METHOD, N_RESPONSE_CLASS,
    N_BODY_RESPONSE, N_HELD_WHOLE, N_NAMES
};
static const char *name_values[N_NAMES] = {
    "get_current", "attach", "detach", "with_span", "extract", "start_server_span", "server_attributes", "_known",
    "_HTTP_TEXT_FORMAT", "get_global_textmap", "HTTP_TRACEPARENT", "HTTP_BAGGAGE", "start_span_deferred",
    "_attribute_blind", "start_span", "is_recording", "start_response", "default_pair", "end", "record",
    "_response", "set_attribute", "capture:SERVER_RESPONSE", "SERVER_RESPONSE", "ctx", "close", "ended", "update_name",
    "guard", "failed", "_tracer", "tracer", "_excluded", "handle", "current_span", "_request", "_get_current_object",
    "request", "environ", "get", "ENVIRON_KEY", "url_rule", "set_route", "span", "REQUEST_METHOD", "rule",
    "_held_whole", "_response_class", "response", "held_whole"};
static PyObject *N[N_NAMES];
static OwnMemo name_memo[N_NAMES];  /* module_name()'s and default_pair()'s, by the name's index in N */

/* a field of the request's (a new reference); AttributeError where Python code deleted it */
static PyObject *
field(PyObject *request, PyObject *value, const char *name)
{
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '%s'", Py_TYPE(request)->tp_name, name);
        return NULL;
    }
    return Py_NewRef(value);
}

/* a module's name read from its dict at each call, as the Python code reads it (a new reference); missing: the
 * NameError of a global of that module's own code, or (`as_attribute`) the AttributeError of `module.name` */
static PyObject *
module_name(PyObject *dict, int name, int as_attribute)
{
    PyObject *f = own_memo_get(dict, N[name], &name_memo[name]);
    if (f == NULL) {
        if (!PyErr_Occurred()) {
            if (as_attribute)
                PyErr_Format(PyExc_AttributeError, "module has no attribute '%U'", N[name]);
            else
                PyErr_Format(PyExc_NameError, "name '%U' is not defined", N[name]);
        }
        return NULL;
    }
    return Py_NewRef(f);
}

#define module_function(dict, name) module_name(hconf[dict], (name), 0)

static PyObject *
call_runtime(int name, PyObject *const *args, size_t nargs)
{
    PyObject *f = module_function(H_RUNTIME, name);
    if (f == NULL)
        return NULL;
    PyObject *r = PyObject_Vectorcall(f, args, nargs, NULL);
    Py_DECREF(f);
    return r;
}

/* propagation.default_pair(): its answer from the propagator it remembers, else the function's */
static int
default_pair(void)
{
    PyObject *known = own_memo_get(hconf[H_PROPAGATION], N[N_KNOWN], &name_memo[N_KNOWN]);
    PyObject *textmap = own_memo_get(hconf[H_PROPAGATE], N[N_TEXT_FORMAT], &name_memo[N_TEXT_FORMAT]);
    PyObject *get_textmap = own_memo_get(hconf[H_PROPAGATE], N[N_GET_TEXTMAP], &name_memo[N_GET_TEXTMAP]);
    PyObject *function = own_memo_get(hconf[H_PROPAGATION], N[N_DEFAULT_PAIR], &name_memo[N_DEFAULT_PAIR]);
    if (PyErr_Occurred())
        return -1;
    if (known != NULL && PyTuple_CheckExact(known) && PyTuple_GET_SIZE(known) == 2 && textmap != NULL
        && get_textmap == hconf[H_GET_TEXTMAP] && function == hconf[H_DEFAULT_PAIR]
        && PyTuple_GET_ITEM(known, 0) == textmap)
        return PyTuple_GET_ITEM(known, 1) != Py_None;
    if (function == NULL) {
        PyErr_SetString(PyExc_AttributeError, "module 'propagation' has no attribute 'default_pair'");
        return -1;
    }
    Py_INCREF(function);
    PyObject *r = PyObject_CallNoArgs(function);
    Py_DECREF(function);
    if (r == NULL)
        return -1;
    int truth = PyObject_IsTrue(r);
    Py_DECREF(r);
    return truth;
}

/* wsgi.extract(environ): the empty context where there is nothing to extract, else the Python function */
static PyObject *
extract(PyObject *environ)
{
    PyObject *f = module_function(H_GLOBALS, N_EXTRACT);
    if (f == NULL)
        return NULL;
    if (f != hconf[H_EXTRACT])
        goto python;
    int has = PyDict_Contains(environ, N[N_TRACEPARENT]);
    if (has == 0)
        has = PyDict_Contains(environ, N[N_BAGGAGE]);
    int pair = has ? 0 : default_pair();
    if (has < 0 || pair < 0) {
        Py_DECREF(f);
        return NULL;
    }
    if (pair) {
        Py_DECREF(f);
        return Py_NewRef(hconf[H_EMPTY]);
    }
python:;
    PyObject *r = PyObject_CallOneArg(f, environ);
    Py_DECREF(f);
    return r;
}

/* whether `d` is fastspan's Tracer.start_span_deferred (asked once per function: wsgi._is_deferred) */
static int
is_known_deferred(PyObject *d)
{
    if (d == known_deferred)
        return 1;
    if (d == other_deferred)
        return 0;
    PyObject *r = PyObject_CallOneArg(hconf[H_IS_DEFERRED], d);
    if (r == NULL)
        return -1;
    int truth = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (truth < 0)
        return -1;
    Py_XSETREF(*(truth ? &known_deferred : &other_deferred), Py_NewRef(d));
    return truth;
}

/* a callable holding two objects (the attributes' maker, the traced start_response): small, no dict */
typedef struct {
    PyObject_HEAD
    PyObject *first, *second;
    vectorcallfunc vectorcall;
} Bound;

static int
bound_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(((Bound *)self)->first);
    Py_VISIT(((Bound *)self)->second);
    return 0;
}

static int
bound_clear(PyObject *self)
{
    Py_CLEAR(((Bound *)self)->first);
    Py_CLEAR(((Bound *)self)->second);
    return 0;
}

static void
bound_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    bound_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyObject *
bound_new(PyTypeObject *type, PyObject *first, PyObject *second, vectorcallfunc call)
{
    Bound *b = PyObject_GC_New(Bound, type);
    if (b == NULL)
        return NULL;
    b->first = Py_NewRef(first);
    b->second = Py_NewRef(second);
    b->vectorcall = call;
    PyObject_GC_Track((PyObject *)b);
    return (PyObject *)b;
}

#define BOUND_TYPE(name, doc)                                                                  \
    {                                                                                          \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "trace_run.instrumentors._wsgi_native." name, \
        .tp_doc = doc, .tp_basicsize = sizeof(Bound),                                          \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,      \
        .tp_vectorcall_offset = offsetof(Bound, vectorcall), .tp_call = PyVectorcall_Call,     \
        .tp_traverse = bound_traverse, .tp_clear = bound_clear, .tp_dealloc = bound_dealloc,   \
    }

/* partial(server_attributes, environ), without partial's dict and tuple: start_span calls it only for a span
 * that records */
static PyObject *
maker_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "the attributes' maker takes no arguments");
        return NULL;
    }
    return PyObject_CallOneArg(((Bound *)callable)->first, ((Bound *)callable)->second);
}

static PyTypeObject MakerType = BOUND_TYPE("attributes_maker", "server_attributes(environ), for a span that records.");

static OwnAttr g_blind, g_tracer_dict;  /* start_server_span's reads of the tracer */
static OwnMemo deferred_memo;

/* 1 where `tracer.start_span_deferred` is fastspan's own method, found as generic getattr finds it (the class's
 * function, no attribute of that name in the instance's dict): known without the bound method getattr would make
 * at each request; 0 where not (getattr then), -1 error */
static int
own_deferred(PyObject *tracer)
{
    PyTypeObject *t = Py_TYPE(tracer);
    if (known_deferred == NULL || t->tp_getattro != PyObject_GenericGetAttr
        || _PyType_Lookup(t, N[N_DEFERRED]) != known_deferred)
        return 0;
    PyObject *d = own_dict(tracer, &g_tracer_dict);
    if (d == NULL)
        return PyErr_ExceptionMatches(PyExc_AttributeError) ? (PyErr_Clear(), 0) : -1;
    int own = 0;
    if (PyDict_CheckExact(d)) {
        own = own_memo_get(d, N[N_DEFERRED], &deferred_memo) == NULL;
        if (PyErr_Occurred())
            own = -1;
    }
    Py_DECREF(d);
    return own;
}

/* wsgi.start_server_span(tracer, environ, parent): the tracer's start_span_deferred called as Python calls it;
 * where that is fastspan's (the tracer's own, or the bound method a FollowingTracer keeps) and its sampler reads
 * neither name nor attributes, the call of start_span it makes is made here. No start_span_deferred (another
 * tracer class), or a replaced wsgi.start_server_span: the Python function. */
static PyObject *
start_server_span(PyObject *tracer, PyObject *environ, PyObject *parent)
{
    PyObject *f = module_function(H_GLOBALS, N_START_SERVER_SPAN);
    if (f == NULL)
        return NULL;
    PyObject *deferred = NULL, *real = NULL;
    int known = 0;
    if (f == hconf[H_START_SERVER_SPAN]) {
        if ((known = own_deferred(tracer)) < 0) {
            Py_DECREF(f);
            return NULL;
        }
        if (known)
            real = Py_NewRef(tracer);
        else if ((deferred = PyObject_GetAttr(tracer, N[N_DEFERRED])) == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
                Py_DECREF(f);
                return NULL;
            }
            PyErr_Clear();  /* getattr(tracer, "start_span_deferred", None) is None */
        }
    }
    if (deferred == NULL && real == NULL) {
        PyObject *args[3] = {tracer, environ, parent};
        PyObject *span = PyObject_Vectorcall(f, args, 3, NULL);
        Py_DECREF(f);
        return span;
    }
    Py_DECREF(f);
    PyObject *span = NULL, *make = NULL, *blind = NULL;
    PyObject *attributes = module_function(H_GLOBALS, N_SERVER_ATTRIBUTES);
    if (attributes == NULL)
        goto done;
    make = bound_new(&MakerType, attributes, environ, maker_vectorcall);
    Py_DECREF(attributes);
    if (make == NULL)
        goto done;
    if (!known) {
        known = PyMethod_Check(deferred) ? is_known_deferred(PyMethod_GET_FUNCTION(deferred)) : 0;
        if (known < 0)
            goto done;
        if (known)
            real = Py_NewRef(PyMethod_GET_SELF(deferred));
    }
    if (known && (blind = own_attr(real, N[N_BLIND], &g_blind)) == NULL)
        goto done;
    if (blind == Py_True) {
        PyObject *args[10] = {real, S[S_EMPTY], parent, hconf[H_SERVER_KIND], Py_None, own_empty_tuple, Py_None,
                              Py_True, Py_True, make};
        span = PyObject_VectorcallMethod(N[N_START_SPAN], args, 10 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    } else if (deferred != NULL) {
        PyObject *args[3] = {parent, hconf[H_SERVER_KIND], make};
        span = PyObject_Vectorcall(deferred, args, 3, NULL);
    } else {  /* the tracer's own method, as the bound method would call it */
        PyObject *args[4] = {real, parent, hconf[H_SERVER_KIND], make};
        span = PyObject_VectorcallMethod(N[N_DEFERRED], args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
done:
    Py_XDECREF(deferred);
    Py_XDECREF(make);
    Py_XDECREF(real);
    Py_XDECREF(blind);
    return span;
}

/* the failing step's exception, if an Exception: given to the guard (as `except Exception as exc:
 * _guard.failed(exc)`, or `self.guard.failed(exc)` for an instrumentor `owner`) while it is the one handled, 0;
 * any other (KeyboardInterrupt, ...) stays raised, -1 */
static int
guard_failed_of(PyObject *owner)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    if (tb != NULL)
        PyException_SetTraceback(ev, tb);
    PyObject *ht, *hv, *htb;
    PyErr_GetExcInfo(&ht, &hv, &htb);
    PyErr_SetExcInfo(et, ev, tb);  /* (takes the references) */
    Py_INCREF(ev);
    PyObject *r;
    if (owner == NULL)
        r = PyObject_CallOneArg(hconf[H_GUARD_FAILED], ev);
    else {
        PyObject *guard = PyObject_GetAttr(owner, N[N_GUARD]);
        r = guard == NULL ? NULL : PyObject_CallMethodOneArg(guard, N[N_FAILED], ev);
        Py_XDECREF(guard);
    }
    Py_DECREF(ev);
    PyErr_SetExcInfo(ht, hv, htb);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int
guard_failed(void)
{
    return guard_failed_of(NULL);
}

/* the request's state, or NULL with no error (not traced: inside another's, suppressed, excluded, or a step
 * failed and the guard said so), or NULL with an error set (one to raise) */
static PyObject *
begin(PyObject *tracer, PyObject *environ, PyObject *excluded)
{
    PyObject *request = NULL, *parent = NULL, *span = NULL, *ctx = NULL;
    int inside = PyDict_Contains(environ, hconf[H_ENVIRON_KEY]);
    if (inside != 0)
        goto failed;  /* (1: traced already, no error) */
    PyObject *current = call_runtime(N_GET_CURRENT, NULL, 0);
    if (current == NULL)
        goto failed;
    PyObject *enabled = PyObject_CallOneArg(hconf[H_ENABLED_IN], current);
    Py_DECREF(current);
    if (enabled == NULL)
        goto failed;
    int on = PyObject_IsTrue(enabled);
    Py_DECREF(enabled);
    if (on <= 0)
        goto failed;  /* (0: suppressed, no error) */
    if (excluded != Py_None) {  /* excluded.search(_request_url(environ)): wsgi._excluded */
        PyObject *f = PyDict_GetItemString(hconf[H_GLOBALS], "_excluded");
        PyObject *hit = f == NULL ? NULL : PyObject_CallFunctionObjArgs(f, excluded, environ, NULL);
        if (hit == NULL) {
            if (f == NULL && !PyErr_Occurred())
                PyErr_SetString(PyExc_NameError, "name '_excluded' is not defined");
            goto failed;
        }
        int yes = PyObject_IsTrue(hit);
        Py_DECREF(hit);
        if (yes != 0)
            goto failed;  /* (1: excluded, no error) */
    }
    if ((parent = extract(environ)) == NULL || (span = start_server_span(tracer, environ, parent)) == NULL)
        goto failed;
    PyObject *args[2] = {span, parent};
    if ((ctx = call_runtime(N_WITH_SPAN, args, 2)) == NULL)
        goto failed;
    PyTypeObject *type = (PyTypeObject *)hconf[H_REQUEST];
    if ((request = type->tp_alloc(type, 0)) == NULL)
        goto failed;
    request_fill((Request *)request, span, ctx);
    if (PyDict_SetItem(environ, hconf[H_ENVIRON_KEY], request) < 0)
        goto failed;
    goto done;
failed:
    if (!PyErr_Occurred())
        goto done;
    if (guard_failed() < 0)
        Py_CLEAR(request);  /* (else it stays, as in Python: made, then the environ refused it) */
done:
    Py_XDECREF(parent);
    Py_XDECREF(span);
    Py_XDECREF(ctx);
    return request;
}

static PyObject *
call_app(PyObject *app, PyObject *environ, PyObject *start_response)
{
    PyObject *args[2] = {environ, start_response};
    return PyObject_Vectorcall(app, args, 2, NULL);
}

/* the app's exception: the request ended with it (wsgi._end_failed), the context detached (the `finally:`),
 * each while it is the one handled (sys.exc_info(); an error they raise has it as its context, as in Python),
 * then it is raised again, the same object. An error of theirs replaces it. */
static PyObject *
app_failed(PyObject *request, PyObject *token)
{
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
    PyObject *r = PyObject_CallFunctionObjArgs(hconf[H_END_FAILED], request, ev, NULL);
    if (r == NULL) {  /* end's error is the one raised now, and the one handled while detach runs */
        Py_DECREF(et);
        Py_DECREF(ev);
        Py_XDECREF(tb);
        PyErr_Fetch(&et, &ev, &tb);
        PyErr_NormalizeException(&et, &ev, &tb);
        if (tb != NULL)
            PyException_SetTraceback(ev, tb);
        Py_INCREF(et);
        Py_INCREF(ev);
        Py_XINCREF(tb);
        PyErr_SetExcInfo(et, ev, tb);
    }
    Py_XDECREF(r);
    PyObject *d = call_runtime(N_DETACH, &token, 1);
    PyErr_SetExcInfo(ht, hv, htb);
    if (d == NULL) {  /* raised in the finally: it replaces the one raised */
        Py_DECREF(et);
        Py_DECREF(ev);
        Py_XDECREF(tb);
        return NULL;
    }
    Py_DECREF(d);
    PyErr_Restore(et, ev, tb);
    return NULL;
}

/* -- the request's end, its status and the bodies: wsgi._RequestMethods' end, start_response and _response,
 * and the _UnrecordedBody, _TracedBody and _HeldBody classes, in C. A method a program or a test replaced on
 * _Request is called as Python calls it: the C one is called directly only where the class still has it. -- */

static PyObject *request_end_descr, *request_response_descr;  /* RequestType's own (borrowed from its dict) */

enum {
    B_END_ERROR, B_PY_RESPONSE, B_CAPTURE, B_CAPTURE_RESPONSE, B_SETTINGS, B_STATUS_KEY, B_PY_SET_ROUTE,
    B_KNOWN_METHODS, B_ROUTE_KEY, N_BCONF
};
static const char *bconf_names[N_BCONF] = {
    "end_error", "py_response", "capture", "capture_response", "settings", "status_key", "py_set_route",
    "known_methods", "route_key"};
static PyObject *bconf[N_BCONF];
static int bodies_configured;

static PyObject *request_end_impl(PyObject *self, PyObject *exc);
static PyObject *request_response_impl(PyObject *self, PyObject *status, PyObject *headers);

static int
bodies_check(void)
{
    if (!bodies_configured) {
        PyErr_SetString(PyExc_RuntimeError, "trace_run.instrumentors._wsgi_native: bodies are not configured");
        return -1;
    }
    return 0;
}

/* a body made by __new__ alone (never __init__'s): an error, not a crash */
static int
body_ready(PyObject *body, PyObject *request)
{
    if (bodies_check() < 0)
        return -1;
    if (body == NULL || request == NULL) {
        PyErr_SetString(PyExc_TypeError, "the body was not initialized (body, request)");
        return -1;
    }
    return 0;
}

/* request.end() or request.end(exc) (exc NULL: no argument, as the Python code calls it) */
static PyObject *
call_end(PyObject *request, PyObject *exc)
{
    if (_PyType_Lookup(Py_TYPE(request), N[N_END]) == request_end_descr && request_end_descr != NULL)
        return request_end_impl(request, exc == NULL ? Py_None : exc);
    return exc == NULL ? PyObject_CallMethodNoArgs(request, N[N_END])
                       : PyObject_CallMethodOneArg(request, N[N_END], exc);
}

/* _RequestMethods.end: once; an exception recorded, or a 5xx status made an error (the Python steps), then the
 * span ended */
static PyObject *
request_end_impl(PyObject *self, PyObject *exc)
{
    if (bodies_check() < 0)
        return NULL;
    Request *r = (Request *)self;
    PyObject *ended = field(self, r->ended, "ended");
    if (ended == NULL)
        return NULL;
    int done = PyObject_IsTrue(ended);
    Py_DECREF(ended);
    if (done)
        return done < 0 ? NULL : Py_NewRef(Py_None);
    Py_XSETREF(r->ended, Py_NewRef(Py_True));
    PyObject *span = field(self, r->span, "span");
    if (span == NULL)
        return NULL;
    PyObject *step = NULL;
    if (exc != Py_None)
        step = PyObject_CallMethodOneArg(self, N[N_RECORD], exc);
    else {
        PyObject *status = field(self, r->status, "status");
        if (status == NULL) {
            Py_DECREF(span);
            return NULL;
        }
        int plain = status == Py_None;
        if (!plain && PyLong_CheckExact(status)) {
            int overflow;
            long code = PyLong_AsLongAndOverflow(status, &overflow);
            plain = !overflow && code < 500 && !(code == -1 && PyErr_Occurred());
            PyErr_Clear();
        }
        Py_DECREF(status);
        step = plain ? Py_NewRef(Py_None) : PyObject_CallOneArg(bconf[B_END_ERROR], self);
    }
    if (step == NULL) {
        Py_DECREF(span);
        return NULL;
    }
    Py_DECREF(step);
    PyObject *out = PyObject_CallMethodNoArgs(span, N[N_END]);
    Py_DECREF(span);
    return out;
}

static PyObject *
request_end(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *exc = nargs > 0 ? args[0] : Py_None;
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0) {
        if (nargs != 0 || PyTuple_GET_SIZE(kwnames) != 1
            || PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "exc") != 0) {
            PyErr_SetString(PyExc_TypeError, "end() takes one argument, exc");
            return NULL;
        }
        exc = args[0];
    } else if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "end() takes at most 1 argument (%zd given)", nargs);
        return NULL;
    }
    return request_end_impl(self, exc);
}

/* the capture of response headers, as http_common.capture("SERVER_RESPONSE") answers: its kept setting */
static PyObject *
capture_response(void)
{
    return kept_or_call(bconf[B_SETTINGS], N[N_CAPTURE_KEY], bconf[B_CAPTURE], N[N_SERVER_RESPONSE]);
}

/* _RequestMethods._response: the status code kept (and set on a recording span), for a status given as a str;
 * anything else, the Python method */
static PyObject *
request_response_impl(PyObject *self, PyObject *status, PyObject *headers)
{
    if (bodies_check() < 0)
        return NULL;
    if (!PyUnicode_CheckExact(status))
        return PyObject_CallFunctionObjArgs(bconf[B_PY_RESPONSE], self, status, headers, NULL);
    Py_ssize_t space = PyUnicode_FindChar(status, ' ', 0, PyUnicode_GET_LENGTH(status), 1);
    if (space == -2)
        return NULL;
    PyObject *head = space < 0 ? Py_NewRef(status) : PyUnicode_Substring(status, 0, space);
    if (head == NULL)
        return NULL;
    PyObject *code = PyLong_FromUnicodeObject(head, 10);  /* what int(head) does with a str */
    Py_DECREF(head);
    if (code == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Request *r = (Request *)self;
    Py_XSETREF(r->status, code);
    PyObject *span = field(self, r->span, "span");
    if (span == NULL)
        return NULL;
    PyObject *out = NULL, *recording = PyObject_CallMethodNoArgs(span, N[N_IS_RECORDING]);
    int yes = recording == NULL ? -1 : PyObject_IsTrue(recording);
    Py_XDECREF(recording);
    if (yes <= 0) {
        Py_DECREF(span);
        return yes < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *args[3] = {span, bconf[B_STATUS_KEY], code};
    PyObject *set = PyObject_VectorcallMethod(N[N_SET_ATTRIBUTE], args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (set == NULL)
        goto done;
    Py_DECREF(set);
    PyObject *cap = capture_response();
    if (cap == NULL)
        goto done;
    if (cap == Py_None) {
        out = cap;
        goto done;
    }
    out = PyObject_CallFunctionObjArgs(bconf[B_CAPTURE_RESPONSE], span, cap, headers, NULL);
    Py_DECREF(cap);
done:
    Py_DECREF(span);
    return out;
}

static PyObject *
request_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "_response() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    return request_response_impl(self, args[0], args[1]);
}

/* the server's start_response for a recording request: the status kept first (request._response, guarded);
 * first: the request, second: the server's start_response */
static PyObject *
responder_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Bound *self = (Bound *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *given[3] = {NULL, NULL, NULL};
    static const char *names[3] = {"status", "headers", "exc_info"};
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError, "start_response() takes from 2 to 3 arguments (%zd given)", nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        given[i] = args[i];
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, k);
        int at = -1;
        for (int i = 0; i < 3; i++) {
            if (PyUnicode_Check(kw) && PyUnicode_CompareWithASCIIString(kw, names[i]) == 0)
                at = i;
        }
        if (at < 0 || given[at] != NULL) {
            PyErr_Format(PyExc_TypeError, at < 0 ? "start_response() got an unexpected keyword argument '%S'"
                                                 : "start_response() got multiple values for argument '%S'", kw);
            return NULL;
        }
        given[at] = args[nargs + k];
    }
    if (given[0] == NULL || given[1] == NULL) {
        PyErr_SetString(PyExc_TypeError, "start_response() missing its status or headers");
        return NULL;
    }
    PyObject *request = self->first, *kept;
    Py_INCREF(request);
    if (_PyType_Lookup(Py_TYPE(request), N[N_RESPONSE]) == request_response_descr && request_response_descr != NULL)
        kept = request_response_impl(request, given[0], given[1]);
    else {
        PyObject *margs[3] = {request, given[0], given[1]};
        kept = PyObject_VectorcallMethod(N[N_RESPONSE], margs, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_DECREF(request);
    if (kept == NULL && guard_failed() < 0)
        return NULL;
    Py_XDECREF(kept);
    PyObject *call[3] = {given[0], given[1], given[2]};
    return PyObject_Vectorcall(self->second, call, given[2] != NULL && given[2] != Py_None ? 3 : 2, NULL);
}

static PyTypeObject ResponderType = BOUND_TYPE("traced_start_response",
                                               "The server's start_response, the request's status kept first.");

static PyObject *
request_start_response(PyObject *self, PyObject *start_response)
{
    return bound_new(&ResponderType, self, start_response, responder_vectorcall);
}

static PyMethodDef request_methods[] = {
    {"end", (PyCFunction)(void (*)(void))request_end, METH_FASTCALL | METH_KEYWORDS,
     "end(exc=None): the span ended once (an exception recorded, a 5xx status an error)."},
    {"_response", (PyCFunction)(void (*)(void))request_response, METH_FASTCALL,
     "_response(status, headers): the status code kept."},
    {"start_response", request_start_response, METH_O,
     "start_response(start_response): the server's, the request's status kept first."},
    {NULL, NULL, 0, NULL}};

/* the bodies: 0 _UnrecordedBody (the context current while a chunk is made), 1 _TracedBody (and the span ended
 * when the body runs out, fails, is closed or dropped), 2 _HeldBody (the same, no context made current) */
enum { UNRECORDED, TRACED, HELD };

typedef struct {
    PyObject_HEAD
    PyObject *body, *iter, *request;
    int kind;
} Body;

static int
body_kind(PyTypeObject *type)
{
    PyObject *kind = PyObject_GetAttrString((PyObject *)type, "_kind");
    if (kind == NULL)
        return -1;
    long k = PyLong_AsLong(kind);
    Py_DECREF(kind);
    if (k == -1 && PyErr_Occurred())
        return -1;
    if (k < UNRECORDED || k > HELD) {
        PyErr_SetString(PyExc_ValueError, "_kind: 0, 1 or 2");
        return -1;
    }
    return (int)k;
}

static void
body_fill(Body *b, int kind, PyObject *body, PyObject *request)
{
    Py_XSETREF(b->body, Py_NewRef(body));
    Py_CLEAR(b->iter);
    Py_XSETREF(b->request, Py_NewRef(request));
    b->kind = kind;
}

static int
body_init(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"body", "request", NULL};
    PyObject *body, *request;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:body", names, &body, &request))
        return -1;
    int kind = body_kind(Py_TYPE(self));
    if (kind < 0)
        return -1;
    body_fill((Body *)self, kind, body, request);
    return 0;
}

static PyObject *
body_make(PyObject *type, int kind, PyObject *body, PyObject *request)
{
    PyObject *made = ((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, 0);
    if (made != NULL)
        body_fill((Body *)made, kind, body, request);
    return made;
}

/* the next chunk, the request's context current while it is made (not for a held body); NULL and no error:
 * the body ran out */
static PyObject *
body_step(Body *self)
{
    PyObject *token = NULL;
    if (self->kind != HELD) {
        PyObject *ctx = PyObject_GetAttr(self->request, N[N_CTX]);
        if (ctx == NULL)
            return NULL;
        token = call_runtime(N_ATTACH, &ctx, 1);
        Py_DECREF(ctx);
        if (token == NULL)
            return NULL;
    }
    PyObject *chunk = NULL;
    if (self->iter == NULL)
        self->iter = PyObject_GetIter(self->body);
    if (self->iter != NULL)
        chunk = PyIter_Next(self->iter);
    if (token != NULL) {  /* the `finally:` (its error replaces the pending one) */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyObject *d = call_runtime(N_DETACH, &token, 1);
        Py_DECREF(token);
        if (d == NULL) {
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(tb);
            Py_XDECREF(chunk);
            return NULL;
        }
        Py_DECREF(d);
        PyErr_Restore(et, ev, tb);
    }
    return chunk;
}

/* `with _guard: request.end(exc)` / `try: request.end() except Exception as exc: _guard.failed(exc)`, while the
 * pending error (if any) is the one handled; 0, or -1 with the error that replaces it */
static int
end_guarded(PyObject *request, PyObject *exc)
{
    PyObject *r = call_end(request, exc);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    return guard_failed();
}

static PyObject *
body_next(PyObject *op)
{
    Body *self = (Body *)op;
    if (body_ready(self->body, self->request) < 0)
        return NULL;
    PyObject *chunk = body_step(self);
    if (chunk != NULL || self->kind == UNRECORDED)
        return chunk;
    Py_INCREF(op);
    PyObject *request = Py_NewRef(self->request);
    if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_StopIteration)) {  /* the whole body is out */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        if (end_guarded(request, NULL) < 0) {
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(tb);
        } else
            PyErr_Restore(et, ev, tb);
    } else {  /* the body's own error: the span ended with it, then it is raised again */
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
        int ok = end_guarded(request, ev) == 0;
        PyErr_SetExcInfo(ht, hv, htb);
        if (ok)
            PyErr_Restore(et, ev, tb);
        else {
            Py_DECREF(et);
            Py_DECREF(ev);
            Py_XDECREF(tb);
        }
    }
    Py_DECREF(request);
    Py_DECREF(op);
    return NULL;
}

static PyObject *
body_close(PyObject *op, PyObject *unused)
{
    Body *self = (Body *)op;
    if (body_ready(self->body, self->request) < 0)
        return NULL;
    Py_INCREF(op);
    int ok = 1;
    PyObject *close = PyObject_GetAttr(self->body, N[N_CLOSE]);  /* getattr(body, "close", None) */
    if (close == NULL) {
        ok = PyErr_ExceptionMatches(PyExc_AttributeError);
        if (ok)
            PyErr_Clear();
    } else {
        PyObject *r = PyObject_CallNoArgs(close);
        Py_DECREF(close);
        ok = r != NULL;
        Py_XDECREF(r);
    }
    if (self->kind != UNRECORDED) {  /* the `finally:` (an error it raises replaces the body's) */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyObject *request = Py_NewRef(self->request);
        int ended = end_guarded(request, NULL);
        Py_DECREF(request);
        if (ended < 0) {
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(tb);
            ok = 0;
        } else
            PyErr_Restore(et, ev, tb);
    }
    Py_DECREF(op);
    return ok ? Py_NewRef(Py_None) : NULL;
}

/* last resort (a server whose write failed drops the body unexhausted, unclosed): the span ended */
static void
body_finalize(PyObject *op)
{
    Body *self = (Body *)op;
    if (self->kind == UNRECORDED || self->request == NULL || !bodies_configured)
        return;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *ended = PyObject_GetAttr(self->request, N[N_ENDED]);
    int done = ended == NULL ? -1 : PyObject_IsTrue(ended);
    Py_XDECREF(ended);
    if (done == 0) {
        PyObject *r = call_end(self->request, NULL);
        Py_XDECREF(r);
    }
    PyErr_Clear();  /* (`except Exception: pass`) */
    PyErr_Restore(et, ev, tb);
}

static int
body_traverse(PyObject *self, visitproc visit, void *arg)
{
    Body *b = (Body *)self;
    Py_VISIT(b->body);
    Py_VISIT(b->iter);
    Py_VISIT(b->request);
    return 0;
}

static int
body_clear(PyObject *self)
{
    Body *b = (Body *)self;
    Py_CLEAR(b->body);
    Py_CLEAR(b->iter);
    Py_CLEAR(b->request);
    return 0;
}

static void
body_dealloc(PyObject *self)
{
    if (PyObject_CallFinalizerFromDealloc(self) < 0)
        return;  /* resurrected */
    PyObject_GC_UnTrack(self);
    body_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyMethodDef body_methods[] = {
    {"close", body_close, METH_NOARGS, "The app's body closed; the span ended (traced bodies), whichever fails."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject BodyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trace_run.instrumentors._wsgi_native.Body",
    .tp_doc = "The bodies' base: their class's _kind says which (0 unrecorded, 1 traced, 2 held).",
    .tp_basicsize = sizeof(Body),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = body_init,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = body_next,
    .tp_finalize = body_finalize,
    .tp_traverse = body_traverse,
    .tp_clear = body_clear,
    .tp_dealloc = body_dealloc,
    .tp_methods = body_methods,
};

/* `"%s %s" % (a, b)` for two exact str (a new str of the same text as PyUnicode_FromFormat("%U %U") makes, without
 * parsing a format: ~1k instructions less per named span) */
static PyObject *
join_space(PyObject *a, PyObject *b)
{
    Py_ssize_t la = PyUnicode_GET_LENGTH(a), lb = PyUnicode_GET_LENGTH(b);
    Py_UCS4 most = PyUnicode_MAX_CHAR_VALUE(a) > PyUnicode_MAX_CHAR_VALUE(b) ? PyUnicode_MAX_CHAR_VALUE(a)
                                                                               : PyUnicode_MAX_CHAR_VALUE(b);
    PyObject *r = PyUnicode_New(la + 1 + lb, most < 0x7f ? 0x7f : most);
    if (r == NULL)
        return NULL;
    if (PyUnicode_CopyCharacters(r, 0, a, 0, la) < 0 || PyUnicode_WriteChar(r, la, ' ') < 0
        || PyUnicode_CopyCharacters(r, la + 1, b, 0, lb) < 0) {
        Py_DECREF(r);
        return NULL;
    }
    return r;
}

/* wsgi.set_route(span, method, route): for a route and a method given as str (a known method), the same calls;
 * anything else, the Python function (configured as bodies' "py_set_route") */
static PyObject *
set_route(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (bodies_check() < 0)
        return NULL;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "set_route() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *span = args[0], *method = args[1], *route = args[2];
    if (!PyUnicode_CheckExact(route) || !PyUnicode_CheckExact(method))
        return PyObject_Vectorcall(bconf[B_PY_SET_ROUTE], args, 3, NULL);
    if (PyUnicode_GET_LENGTH(route) == 0)
        Py_RETURN_NONE;
    PyObject *recording = PyObject_CallMethodNoArgs(span, N[N_IS_RECORDING]);
    int yes = recording == NULL ? -1 : PyObject_IsTrue(recording);
    Py_XDECREF(recording);
    if (yes <= 0)
        return yes < 0 ? NULL : Py_NewRef(Py_None);
    int known = PySet_Contains(bconf[B_KNOWN_METHODS], method);
    if (known < 0)
        return NULL;
    if (!known)  /* (normalized there: the same checks again, then its steps) */
        return PyObject_Vectorcall(bconf[B_PY_SET_ROUTE], args, 3, NULL);
    PyObject *name = join_space(method, route);
    if (name == NULL)
        return NULL;
    PyObject *r = PyObject_CallMethodOneArg(span, N[N_UPDATE_NAME], name);
    Py_DECREF(name);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    PyObject *call[3] = {span, bconf[B_ROUTE_KEY], route};
    return PyObject_VectorcallMethod(N[N_SET_ATTRIBUTE], call, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyObject *
configure_bodies(PyObject *module, PyObject *names)
{
    PyObject *got[N_BCONF];
    if (read_names("configure_bodies", names, N_BCONF, bconf_names, got) < 0)
        return NULL;
    if (!PyDict_Check(got[B_SETTINGS]) || !PyAnySet_Check(got[B_KNOWN_METHODS])) {
        PyErr_SetString(PyExc_TypeError, "settings: a dict; known_methods: a set");
        return NULL;
    }
    keep_names(N_BCONF, got, bconf);
    bodies_configured = 1;
    Py_RETURN_NONE;
}

static PyObject *
handle(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (!handle_configured || nargs < 4 || nargs > 6 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)
        || !PyDict_CheckExact(args[1]))
        return PyObject_Vectorcall(hconf[H_PYTHON] != NULL ? hconf[H_PYTHON] : Py_None, args, nargs, kwnames);
    PyObject *tracer = args[0], *environ = args[1], *start_response = args[2], *app = args[3];
    PyObject *excluded = nargs > 4 ? args[4] : Py_None, *body = nargs > 5 ? args[5] : Py_None;
    if (body == Py_None)
        body = hconf[H_TRACED_BODY];
    PyObject *request = begin(tracer, environ, excluded);
    if (request == NULL)
        return PyErr_Occurred() ? NULL : call_app(app, environ, start_response);
    PyObject *result = NULL, *token = NULL, *responder = NULL;
    PyObject *span = field(request, ((Request *)request)->span, "span");
    int recording = 0;
    if (span == NULL)
        goto done;
    if ((PyObject *)Py_TYPE(span) != hconf[H_NON_RECORDING]) {
        PyObject *r = PyObject_CallMethodNoArgs(span, N[N_IS_RECORDING]);
        if (r == NULL)
            goto done;
        recording = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (recording < 0)
            goto done;
    }
    Py_DECREF(span);
    span = NULL;
    responder = recording ? PyObject_CallMethodOneArg(request, N[N_START_RESPONSE], start_response)
                          : Py_NewRef(start_response);
    if (responder == NULL)
        goto done;
    PyObject *ctx = field(request, ((Request *)request)->ctx, "ctx");
    if (ctx == NULL)
        goto done;
    token = call_runtime(N_ATTACH, &ctx, 1);
    Py_DECREF(ctx);
    if (token == NULL)
        goto done;
    PyObject *got = call_app(app, environ, responder);
    if (got == NULL) {
        app_failed(request, token);
        goto done;
    }
    PyObject *d = call_runtime(N_DETACH, &token, 1);
    if (d == NULL) {
        Py_DECREF(got);
        goto done;
    }
    Py_DECREF(d);
    if (body == hconf[H_TRACED_BODY]) {
        PyObject *whole = field(request, ((Request *)request)->held_whole, "held_whole");
        int held = whole == NULL ? -1 : PyObject_IsTrue(whole);
        Py_XDECREF(whole);
        if (held < 0) {
            Py_DECREF(got);
            goto done;
        }
        if (!recording && held) {
            result = got;
            goto done;
        }
        int kind = !recording ? UNRECORDED : held ? HELD : TRACED;
        body = hconf[kind == UNRECORDED ? H_UNRECORDED_BODY : kind == HELD ? H_HELD_BODY : H_TRACED_BODY];
        if (PyType_Check(body) && PyType_IsSubtype((PyTypeObject *)body, &BodyType)) {
            result = body_make(body, kind, got, request);
            Py_DECREF(got);
            goto done;
        }
    }
    PyObject *pair[2] = {got, request};
    result = PyObject_Vectorcall(body, pair, 2, NULL);
    Py_DECREF(got);
done:
    Py_XDECREF(span);
    Py_XDECREF(token);
    Py_XDECREF(responder);
    Py_DECREF(request);
    return result;
}

static PyObject *
configure_handle(PyObject *module, PyObject *names)
{
    PyObject *got[N_HCONF];
    if (read_names("configure_handle", names, N_HCONF, hconf_names, got) < 0)
        return NULL;
    if (!PyDict_Check(got[H_RUNTIME]) || !PyDict_Check(got[H_GLOBALS]) || !PyDict_Check(got[H_PROPAGATION])
        || !PyDict_Check(got[H_PROPAGATE]) || !PyType_Check(got[H_REQUEST])
        || !PyType_IsSubtype((PyTypeObject *)got[H_REQUEST], &RequestType) || !PyType_Check(got[H_NON_RECORDING])) {
        PyErr_SetString(PyExc_TypeError, "configure_handle(): unexpected objects");
        return NULL;
    }
    keep_names(N_HCONF, got, hconf);
    Py_CLEAR(known_deferred);
    Py_CLEAR(other_deferred);
    handle_configured = 1;
    Py_RETURN_NONE;
}

/* -- instrumentors/flask.py's hooks: FlaskInstrumentor._wsgi_app, _full_dispatch_request and _held_whole, in C.
 * Every Flask request, sampled or not, ran ~90 bytecodes in them (and 13 more in werkzeug's LocalProxy reading
 * flask.request): this makes the same calls in the same order, with the same objects; a guarded step that fails
 * with an Exception goes to the instrumentor's guard (`self.guard.failed(exc)`), the wrapped call's exception
 * propagates as it is. A call of another shape (keywords, args that are not a tuple, ...) goes to the Python
 * method whole; a _held_whole replaced on the instrumentor's class is called as Python calls it. The hooks are
 * what the instrumentor gives self.wrap() instead of its bound methods: callables holding the instrumentor, no
 * Python frame of their own. tests/instrumentors/http/test_flask_native.py runs both through the same cases. -- */

enum { F_WSGI_APP, F_FULL_DISPATCH, F_HELD_WHOLE, F_ENVIRON_ARGS, F_WSGI, F_RUNTIME, F_NON_RECORDING, N_FCONF };
static const char *fconf_names[N_FCONF] = {
    "wsgi_app", "full_dispatch_request", "held_whole", "environ_args", "wsgi", "runtime", "non_recording"};
static PyObject *fconf[N_FCONF];
static int flask_configured;

/* a hook: the instrumentor, and (proxy, getter, var) where flask.request's layout was checked at _patch time
 * (werkzeug's LocalProxy of flask.globals._cv_request's `.request`), else NULLs */
typedef struct {
    PyObject_HEAD
    PyObject *instrumentor, *proxy, *getter, *var;
    vectorcallfunc vectorcall;
} Hook;

static int
hook_traverse(PyObject *self, visitproc visit, void *arg)
{
    Hook *h = (Hook *)self;
    Py_VISIT(h->instrumentor);
    Py_VISIT(h->proxy);
    Py_VISIT(h->getter);
    Py_VISIT(h->var);
    return 0;
}

static int
hook_clear(PyObject *self)
{
    Hook *h = (Hook *)self;
    Py_CLEAR(h->instrumentor);
    Py_CLEAR(h->proxy);
    Py_CLEAR(h->getter);
    Py_CLEAR(h->var);
    return 0;
}

static void
hook_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    hook_clear(self);
    Py_TYPE(self)->tp_free(self);
}

/* `module.name`, read from the module's dict at each call (module_name) */
#define module_attr(dict, name) module_name(fconf[dict], (name), 1)

/* (the instrumentor's objects live as long as the app: reading their dict makes it once. The program's objects,
 * Flask's request (new per request) and the routing rules, are read by getattr, which does not turn an
 * instance's inline values into a dict, as reading its dict would: the program's own reads of them would then
 * take the slow path) */
static OwnAttr g_tracer, g_excluded, g_request_proxy, g_response_class;

/* `mapping.get(key)` (fallback NULL) or `mapping.get(key, fallback)`: a dict's lookup, else its get method */
static PyObject *
get_of(PyObject *mapping, PyObject *key, PyObject *fallback)
{
    if (PyDict_CheckExact(mapping)) {
        PyObject *v = PyDict_GetItemWithError(mapping, key);
        if (v == NULL) {
            if (PyErr_Occurred())
                return NULL;
            v = fallback == NULL ? Py_None : fallback;
        }
        return Py_NewRef(v);
    }
    PyObject *args[3] = {mapping, key, fallback};
    return PyObject_VectorcallMethod(N[N_GET], args, (fallback == NULL ? 2 : 3) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

/* the hook called as a wrapper is: (wrapped, instance, args, kwargs), args a tuple and kwargs a dict */
static int
hook_plain(PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return flask_configured && PyVectorcall_NARGS(nargsf) == 4 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0)
           && PyTuple_CheckExact(args[2]) && PyDict_CheckExact(args[3]);
}

/* the Python method (fconf[which]) of the hook's instrumentor, called with what the hook was given */
static PyObject *
hook_python(int which, Hook *h, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (fconf[which] == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "trace_run.instrumentors._wsgi_native: Flask hooks are not configured");
        return NULL;
    }
    PyObject *method = PyMethod_New(fconf[which], h->instrumentor);
    if (method == NULL)
        return NULL;
    PyObject *r = PyObject_Vectorcall(method, args, nargsf, kwnames);
    Py_DECREF(method);
    return r;
}

/* wrapped(*args, **kwargs) */
static PyObject *
call_wrapped(PyObject *wrapped, PyObject *args, PyObject *kwargs)
{
    if (PyDict_GET_SIZE(kwargs) == 0)
        return PyObject_Vectorcall(wrapped, &PyTuple_GET_ITEM(args, 0), PyTuple_GET_SIZE(args), NULL);
    return PyObject_Call(wrapped, args, kwargs);
}

/* FlaskInstrumentor._wsgi_app: wsgi.handle(self._tracer or self.tracer, environ, start_response, wrapped,
 * self._excluded) */
static PyObject *
app_hook_call(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Hook *h = (Hook *)callable;
    if (!hook_plain(args, nargsf, kwnames))
        return hook_python(F_WSGI_APP, h, args, nargsf, kwnames);
    PyObject *wrapped = args[0], *given = args[2], *kwargs = args[3], *pair = NULL;
    if (PyTuple_GET_SIZE(given) == 2 && PyDict_GET_SIZE(kwargs) == 0)
        pair = Py_NewRef(given);
    else {  /* (servers pass both by position: the helper call only for other ways of calling) */
        pair = PyObject_Call(fconf[F_ENVIRON_ARGS], given, kwargs);
        if (pair == NULL)
            return NULL;
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_ValueError, "_environ_args() answered something other than a pair");
            return NULL;
        }
    }
    PyObject *inst = h->instrumentor, *result = NULL, *tracer = NULL, *excluded = NULL;
    PyObject *handle = module_attr(F_WSGI, N_HANDLE);
    if (handle == NULL || (tracer = own_attr(inst, N[N_TRACER_FIELD], &g_tracer)) == NULL)
        goto done;
    int truth = PyObject_IsTrue(tracer);
    if (truth < 0)
        goto done;
    if (!truth)
        Py_SETREF(tracer, PyObject_GetAttr(inst, N[N_TRACER]));
    if (tracer == NULL || (excluded = own_attr(inst, N[N_EXCLUDED], &g_excluded)) == NULL)
        goto done;
    PyObject *call[5] = {tracer, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1), wrapped, excluded};
    result = PyObject_Vectorcall(handle, call, 5, NULL);
done:
    Py_DECREF(pair);
    Py_XDECREF(handle);
    Py_XDECREF(tracer);
    Py_XDECREF(excluded);
    return result;
}

/* self._request._get_current_object(): where the proxy is the one checked at _patch time and still has that
 * function, what the function does (the ContextVar's value's `request`; no value: the function, which raises
 * as it does) without its frame */
static PyObject *
current_request(Hook *h)
{
    PyObject *proxy = own_attr(h->instrumentor, N[N_REQUEST_PROXY], &g_request_proxy);
    if (proxy == NULL)
        return NULL;
    PyObject *getter = PyObject_GetAttr(proxy, N[N_GET_CURRENT_OBJECT]);
    int known = h->var != NULL && proxy == h->proxy && getter == h->getter;
    Py_DECREF(proxy);
    if (getter == NULL)
        return NULL;
    PyObject *r, *ctx = NULL;
    if (!known)
        r = PyObject_CallNoArgs(getter);
    else if (PyContextVar_Get(h->var, NULL, &ctx) < 0)
        r = NULL;
    else if (ctx == NULL)
        r = PyObject_CallNoArgs(getter);
    else {
        r = PyObject_GetAttr(ctx, N[N_REQUEST]);
        Py_DECREF(ctx);
    }
    Py_DECREF(getter);
    return r;
}

/* environ.get(wsgi.ENVIRON_KEY): the request's state, or None */
static PyObject *
state_in(PyObject *environ)
{
    PyObject *key = module_attr(F_WSGI, N_ENVIRON_KEY);
    if (key == NULL)
        return NULL;
    PyObject *state = get_of(environ, key, NULL);
    Py_DECREF(key);
    return state;
}

/* FlaskInstrumentor._held_whole(response, state) (state NULL: not given): a response of Flask's own class whose
 * body is a list marks the request's state held_whole. `method`: the instrumentor's _held_whole where its class
 * has another (looked up before the view ran, as Python does), NULL for the steps here. A new reference. */
static PyObject *
held_whole(Hook *h, PyObject *method, PyObject *response, PyObject *state)
{
    if (method != NULL) {
        PyObject *args[2] = {response, state};
        return PyObject_Vectorcall(method, args, state == NULL ? 1 : 2, NULL);
    }
    PyObject *inst = h->instrumentor, *cls = NULL, *body = NULL, *req = NULL, *environ = NULL;
    Py_INCREF(response);
    state = Py_NewRef(state == NULL ? Py_None : state);
    if ((cls = own_attr(inst, N[N_RESPONSE_CLASS], &g_response_class)) == NULL)
        goto failed;
    if ((PyObject *)Py_TYPE(response) == cls) {
        if ((body = PyObject_GetAttr(response, N[N_BODY_RESPONSE])) == NULL)
            goto failed;
        if (Py_IS_TYPE(body, &PyList_Type)) {
            if (state == Py_None) {
                if ((req = current_request(h)) == NULL || (environ = PyObject_GetAttr(req, N[N_ENVIRON])) == NULL)
                    goto failed;
                PyObject *got = state_in(environ);
                if (got == NULL)
                    goto failed;
                Py_SETREF(state, got);
            }
            if (state != Py_None && PyObject_SetAttr(state, N[N_HELD_WHOLE], Py_True) < 0)
                goto failed;
        }
    }
    goto done;
failed:
    if (guard_failed_of(inst) < 0)
        Py_CLEAR(response);
done:
    Py_DECREF(state);
    Py_XDECREF(cls);
    Py_XDECREF(body);
    Py_XDECREF(req);
    Py_XDECREF(environ);
    return response;
}

/* the instrumentor's _held_whole bound, where its class has another than FlaskInstrumentor's (NULL and no
 * error: that one, done here) */
static PyObject *
held_whole_method(Hook *h, int *failed)
{
    PyObject *inst = h->instrumentor;
    *failed = 0;
    if (_PyType_Lookup(Py_TYPE(inst), N[N_HELD_WHOLE_METHOD]) == fconf[F_HELD_WHOLE])
        return NULL;
    PyObject *m = PyObject_GetAttr(inst, N[N_HELD_WHOLE_METHOD]);
    *failed = m == NULL;
    return m;
}

/* the guarded naming step of a recording request: the request's state (a new reference: None where it was not
 * found), or NULL with the error raised (the guard raised it, or it was no Exception) */
static PyObject *
name_span(Hook *h)
{
    PyObject *state = Py_NewRef(Py_None), *req = NULL, *environ = NULL, *rule = NULL, *set_route = NULL,
             *span = NULL, *method = NULL, *route = NULL, *r = NULL;
    if ((req = current_request(h)) == NULL || (environ = PyObject_GetAttr(req, N[N_ENVIRON])) == NULL)
        goto failed;
    PyObject *got = state_in(environ);
    if (got == NULL)
        goto failed;
    Py_SETREF(state, got);
    if ((rule = PyObject_GetAttr(req, N[N_URL_RULE])) == NULL)
        goto failed;
    if (state != Py_None && rule != Py_None) {
        if ((set_route = module_attr(F_WSGI, N_SET_ROUTE)) == NULL || (span = PyObject_GetAttr(state, N[N_SPAN])) == NULL
            || (method = get_of(environ, S[S_REQUEST_METHOD], S[S_EMPTY])) == NULL
            /* the rule is the program's: by getattr, not own_attr (see own_attr.h: its dict would be made) */
            || (route = PyObject_GetAttr(rule, N[N_RULE])) == NULL)
            goto failed;
        PyObject *args[3] = {span, method, route};
        if ((r = PyObject_Vectorcall(set_route, args, 3, NULL)) == NULL)
            goto failed;
    }
    goto done;
failed:
    if (guard_failed_of(h->instrumentor) < 0)
        Py_CLEAR(state);
done:
    Py_XDECREF(req);
    Py_XDECREF(environ);
    Py_XDECREF(rule);
    Py_XDECREF(set_route);
    Py_XDECREF(span);
    Py_XDECREF(method);
    Py_XDECREF(route);
    Py_XDECREF(r);
    return state;
}

/* FlaskInstrumentor._full_dispatch_request: a span of ours that records is named by the matched route, then the
 * view runs; its response goes through _held_whole */
static PyObject *
dispatch_hook_call(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Hook *h = (Hook *)callable;
    if (!hook_plain(args, nargsf, kwnames))
        return hook_python(F_FULL_DISPATCH, h, args, nargsf, kwnames);
    PyObject *wrapped = args[0], *given = args[2], *kwargs = args[3];
    PyObject *current = module_attr(F_RUNTIME, N_CURRENT_SPAN);
    if (current == NULL)
        return NULL;
    PyObject *span = PyObject_CallNoArgs(current);
    Py_DECREF(current);
    if (span == NULL)
        return NULL;
    int recording = 0;
    if ((PyObject *)Py_TYPE(span) != fconf[F_NON_RECORDING]) {
        PyObject *r = PyObject_CallMethodNoArgs(span, N[N_IS_RECORDING]);
        recording = r == NULL ? -1 : PyObject_IsTrue(r);
        Py_XDECREF(r);
    }
    Py_DECREF(span);
    if (recording < 0)
        return NULL;
    PyObject *state = NULL;
    if (recording && (state = name_span(h)) == NULL)
        return NULL;
    int failed;
    PyObject *method = held_whole_method(h, &failed), *result = NULL;
    if (!failed) {
        PyObject *response = call_wrapped(wrapped, given, kwargs);
        if (response != NULL) {
            result = held_whole(h, method, response, state);
            Py_DECREF(response);
        }
    }
    Py_XDECREF(method);
    Py_XDECREF(state);
    return result;
}

#define HOOK_TYPE(name, doc)                                                                   \
    {                                                                                          \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "trace_run.instrumentors._wsgi_native." name, \
        .tp_doc = doc, .tp_basicsize = sizeof(Hook),                                           \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,      \
        .tp_vectorcall_offset = offsetof(Hook, vectorcall), .tp_call = PyVectorcall_Call,      \
        .tp_traverse = hook_traverse, .tp_clear = hook_clear, .tp_dealloc = hook_dealloc,      \
    }

static PyTypeObject AppHookType = HOOK_TYPE("flask_wsgi_app", "FlaskInstrumentor._wsgi_app of one instrumentor.");
static PyTypeObject DispatchHookType = HOOK_TYPE("flask_full_dispatch_request",
                                                 "FlaskInstrumentor._full_dispatch_request of one instrumentor.");

static PyObject *
hook_new(PyTypeObject *type, vectorcallfunc call, PyObject *instrumentor, PyObject *request)
{
    Hook *h = PyObject_GC_New(Hook, type);
    if (h == NULL)
        return NULL;
    h->instrumentor = Py_NewRef(instrumentor);
    h->proxy = h->getter = h->var = NULL;
    if (request != Py_None) {
        h->proxy = Py_NewRef(PyTuple_GET_ITEM(request, 0));
        h->getter = Py_NewRef(PyTuple_GET_ITEM(request, 1));
        h->var = Py_NewRef(PyTuple_GET_ITEM(request, 2));
    }
    h->vectorcall = call;
    PyObject_GC_Track((PyObject *)h);
    return (PyObject *)h;
}

/* flask_hooks(instrumentor, request) -> (the _wsgi_app hook, the _full_dispatch_request hook); request: None, or
 * (flask.request, its _get_current_object, the ContextVar that reads) where that layout was checked */
static PyObject *
flask_hooks(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!flask_configured) {
        PyErr_SetString(PyExc_RuntimeError, "trace_run.instrumentors._wsgi_native: Flask hooks are not configured");
        return NULL;
    }
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "flask_hooks() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *request = args[1];
    if (request != Py_None && (!PyTuple_CheckExact(request) || PyTuple_GET_SIZE(request) != 3
                               || !PyContextVar_CheckExact(PyTuple_GET_ITEM(request, 2)))) {
        PyErr_SetString(PyExc_TypeError, "flask_hooks(): request is None or (proxy, getter, ContextVar)");
        return NULL;
    }
    PyObject *app = hook_new(&AppHookType, app_hook_call, args[0], request);
    PyObject *dispatch = app == NULL ? NULL : hook_new(&DispatchHookType, dispatch_hook_call, args[0], request);
    PyObject *pair = dispatch == NULL ? NULL : PyTuple_Pack(2, app, dispatch);
    Py_XDECREF(app);
    Py_XDECREF(dispatch);
    return pair;
}

static PyObject *
configure_flask(PyObject *module, PyObject *names)
{
    PyObject *got[N_FCONF];
    if (read_names("configure_flask", names, N_FCONF, fconf_names, got) < 0)
        return NULL;
    if (!PyFunction_Check(got[F_WSGI_APP]) || !PyFunction_Check(got[F_FULL_DISPATCH])
        || !PyFunction_Check(got[F_HELD_WHOLE]) || !PyDict_Check(got[F_WSGI]) || !PyDict_Check(got[F_RUNTIME])
        || !PyType_Check(got[F_NON_RECORDING])) {
        PyErr_SetString(PyExc_TypeError, "configure_flask(): unexpected objects");
        return NULL;
    }
    keep_names(N_FCONF, got, fconf);
    flask_configured = 1;
    Py_RETURN_NONE;
}

static PyObject *
configure(PyObject *module, PyObject *names)
{
    PyObject *got[N_CONF];
    if (read_names("configure", names, N_CONF, conf_names, got) < 0)
        return NULL;
    if (!PyAnySet_Check(got[C_KNOWN]) || !PyDict_Check(got[C_PEERS]) || !PyDict_Check(got[C_CONFIG_CACHE])
        || !PyDict_Check(got[C_SETTINGS])) {
        PyErr_SetString(PyExc_TypeError, "known: a set; peers, config_cache, settings: dicts");
        return NULL;
    }
    keep_names(N_CONF, got, conf);
    configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_O, "configure(names: dict): the objects server_attributes uses or calls."},
    {"server_attributes", server_attributes, METH_O, "wsgi.server_attributes(environ) -> (name, attributes)."},
    {"configure_handle", configure_handle, METH_O, "configure_handle(names: dict): the objects handle uses or calls."},
    {"set_route", (PyCFunction)(void (*)(void))set_route, METH_FASTCALL,
     "wsgi.set_route(span, method, route): the span named `METHOD route`, http.route set."},
    {"configure_bodies", configure_bodies, METH_O,
     "configure_bodies(names: dict): the Python steps Request's methods and the bodies call."},
    {"handle", (PyCFunction)(void (*)(void))handle, METH_FASTCALL | METH_KEYWORDS,
     "wsgi.handle(tracer, environ, start_response, app, excluded=None, body=_TracedBody)."},
    {"configure_flask", configure_flask, METH_O, "configure_flask(names: dict): what the Flask hooks use or call."},
    {"flask_hooks", (PyCFunction)(void (*)(void))flask_hooks, METH_FASTCALL,
     "flask_hooks(instrumentor, request) -> the FlaskInstrumentor's _wsgi_app and _full_dispatch_request hooks."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_wsgi_native",
                                        "wsgi.server_attributes' common case, wsgi.handle and the Flask hooks in C.", -1, module_methods};

PyMODINIT_FUNC
PyInit__wsgi_native(void)
{
    for (int i = 0; i < N_STR; i++) {
        if (S[i] == NULL && (S[i] = PyUnicode_InternFromString(str_values[i])) == NULL)
            return NULL;
    }
    for (int i = 0; i < N_NAMES; i++) {
        if (N[i] == NULL && (N[i] = PyUnicode_InternFromString(name_values[i])) == NULL)
            return NULL;
    }
    if (own_attr_init() < 0)
        return NULL;
    RequestType.tp_methods = request_methods;
    if (PyType_Ready(&RequestType) < 0 || PyType_Ready(&ResponderType) < 0 || PyType_Ready(&BodyType) < 0
        || PyType_Ready(&MakerType) < 0 || PyType_Ready(&AppHookType) < 0 || PyType_Ready(&DispatchHookType) < 0)
        return NULL;
    request_end_descr = PyDict_GetItemString(RequestType.tp_dict, "end");
    request_response_descr = PyDict_GetItemString(RequestType.tp_dict, "_response");
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    Py_INCREF(&RequestType);
    if (PyModule_AddObject(module, "Request", (PyObject *)&RequestType) < 0) {
        Py_DECREF(&RequestType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&BodyType);
    if (PyModule_AddObject(module, "Body", (PyObject *)&BodyType) < 0) {
        Py_DECREF(&BodyType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
