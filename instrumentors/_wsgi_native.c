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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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
    C_SCHEME_KEY, C_PATH_KEY, C_TRUNCATED, N_CONF
};
static const char *conf_names[N_CONF] = {
    "known", "peers", "limit", "capture", "python", "query_into", "peer_into", "capture_into", "method_key",
    "scheme_key", "path_key", "truncated"};
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
    PyObject *bound = PyObject_CallNoArgs(conf[C_LIMIT]);
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
    PyObject *found = PyDict_GetItemWithError(conf[C_PEERS], key);
    if (found == NULL && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError))
            goto done;
        PyErr_Clear();  /* a value that cannot be a key: worked out every time, there */
    }
    int cut = 0;
    if (found != NULL && (!PyDict_CheckExact(found) || (cut = PyDict_Contains(found, conf[C_TRUNCATED])) != 0)) {
        if (cut < 0)
            goto done;
        found = NULL;
    }
    if (found != NULL ? PyDict_Update(attrs, found) < 0 : call_into(C_PEER_INTO, attrs, environ, bound) < 0)
        goto done;
    PyObject *cap = PyObject_CallOneArg(conf[C_CAPTURE], S[S_SERVER_REQUEST]);
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
    if (!PyAnySet_Check(got[C_KNOWN]) || !PyDict_Check(got[C_PEERS])) {
        PyErr_SetString(PyExc_TypeError, "known: a set; peers: a dict");
        return NULL;
    }
    for (int i = 0; i < N_CONF; i++)
        Py_XSETREF(conf[i], Py_NewRef(got[i]));
    configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_O, "configure(names: dict): the objects server_attributes uses or calls."},
    {"server_attributes", server_attributes, METH_O, "wsgi.server_attributes(environ) -> (name, attributes)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_wsgi_native",
                                        "wsgi.server_attributes' common case in C.", -1, module_methods};

PyMODINIT_FUNC
PyInit__wsgi_native(void)
{
    for (int i = 0; i < N_STR; i++) {
        if (S[i] == NULL && (S[i] = PyUnicode_InternFromString(str_values[i])) == NULL)
            return NULL;
    }
    return PyModule_Create(&module_def);
}
