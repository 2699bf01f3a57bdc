/* The common case of otlp_encoder.Encoder._own_span, in C.
 *
 * encode_span(span) reads a finished trace-run span's fields (its slots, or a dict of them by name) and gives
 * the bytes of its OTLP Span
 * message (the same bytes as the Python path: tests/test_otlp_native.py), or None where the span is not
 * the common case (a non-empty TraceState, events, links, an attribute value the Python path would skip
 * or that is not a str, bool, int, float or a tuple/list of those, any unexpected field): the Python
 * path then encodes it. Python code only runs where the Python path runs it too (a TraceState's len).
 *
 * frame(spans, start, stop, entries) is Encoder.encode's loop over a slice of a batch of Encoded items: each
 * span's field appended to its group's bytearray (see there).
 *
 * Field numbers are those of opentelemetry/proto/trace/v1/trace.proto and common/v1/common.proto.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include "../core/own_attr.h"

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
Py_NewRef(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
#endif

/* -- what configure() gives: the objects the span's fields are compared with, by identity ------------ */

#define MAX_ENUM 8
static PyObject *kind_members[MAX_ENUM];
static unsigned char kind_wire[MAX_ENUM];
static Py_ssize_t n_kinds;
static PyObject *code_members[MAX_ENUM];
static unsigned char code_wire[MAX_ENUM];
static Py_ssize_t n_codes;
static PyObject *unset_status;  /* fastspan's Status of a span whose status was never set */
static PyObject *status_type;   /* opentelemetry.trace.Status */
static PyObject *empty_state;   /* the API's DEFAULT_TRACE_STATE */
static PyObject *bounded_type;  /* opentelemetry.attributes.BoundedAttributes */
static PyObject *span_type;     /* fastspan.Span (None: SpanContext is not the tuple read here) */
static PyObject *encoded_type;  /* otlp_encoder.Encoded, a tuple subclass */

/* the span's field names, then its attributes' and status's */
enum { F_CONTEXT, F_PARENT, F_NAME, F_KIND, F_START, F_END, F_ATTRIBUTES, F_EVENTS, F_LINKS, F_STATUS, N_FIELDS };
static const char *field_names[N_FIELDS] = {"_context", "_parent", "_name", "_kind", "_start_time",
                                            "_end_time", "_attributes", "_events", "_links", "_status"};
static PyObject *field_keys[N_FIELDS];
/* where span_type keeps them (core/own_attr.h's slots), and its resource and instrumentation scope; set with
 * span_type (span_slots 0: not slots as read here, its spans go the Python way) */
static Py_ssize_t field_off[N_FIELDS], resource_off, scope_off;
static int span_slots;
static PyObject *s_dict, *s_dropped, *s_status_code, *s_description, *k_resource, *k_scope;

/* Results of the helpers below: OK, DECLINE (not the common case; no exception set) or ERROR (set). */
#define OK 0
#define DECLINE 1
#define ERROR (-1)

/* -- an output buffer: on the stack for most spans, on the heap past that ---------------------------- */

typedef struct {
    unsigned char *data;
    Py_ssize_t len, cap;
    unsigned char stack[1024];
} Writer;

static int
reserve(Writer *w, Py_ssize_t n)
{
    if (w->len + n <= w->cap)
        return OK;
    Py_ssize_t cap = w->cap * 2;
    while (cap < w->len + n)
        cap *= 2;
    unsigned char *data;
    if (w->data == w->stack) {
        data = PyMem_Malloc(cap);
        if (data != NULL)
            memcpy(data, w->stack, w->len);
    }
    else
        data = PyMem_Realloc(w->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return ERROR;
    }
    w->data = data;
    w->cap = cap;
    return OK;
}

static void
release(Writer *w)
{
    if (w->data != w->stack)
        PyMem_Free(w->data);
}

/* The writes below need room reserved first (reserve()). */
static inline void
put(Writer *w, const void *bytes, Py_ssize_t n)
{
    memcpy(w->data + w->len, bytes, n);
    w->len += n;
}

static inline void
put_byte(Writer *w, unsigned char b)
{
    w->data[w->len++] = b;
}

static inline Py_ssize_t
varint_len(uint64_t n)
{
    Py_ssize_t k = 1;
    while (n >= 128) {
        n >>= 7;
        k++;
    }
    return k;
}

static inline void
put_varint(Writer *w, uint64_t n)
{
    while (n >= 128) {
        w->data[w->len++] = (unsigned char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    w->data[w->len++] = (unsigned char)n;
}

/* A length-delimited field: its tag, the length, the bytes (field_len(n) reserved). */
static inline void
put_field(Writer *w, unsigned char tag, const char *bytes, Py_ssize_t n)
{
    put_byte(w, tag);
    put_varint(w, (uint64_t)n);
    put(w, bytes, n);
}

static inline void
put_le64(Writer *w, uint64_t n)
{
    for (int i = 0; i < 8; i++)
        w->data[w->len++] = (unsigned char)(n >> (8 * i));
}

static inline void
put_be64(Writer *w, uint64_t n)
{
    for (int i = 7; i >= 0; i--)
        w->data[w->len++] = (unsigned char)(n >> (8 * i));
}

/* A length-delimited field's size: tag, length, payload. */
static inline Py_ssize_t
field_len(Py_ssize_t payload)
{
    return 1 + varint_len((uint64_t)payload) + payload;
}

/* -- reading Python objects --------------------------------------------------------------------------- */

/* A str's UTF-8 (kept by the str itself). DECLINE where it has none (lone surrogates): the Python path
 * then meets the same UnicodeEncodeError and does what it does with it. */
static int
utf8(PyObject *s, const char **data, Py_ssize_t *n)
{
    *data = PyUnicode_AsUTF8AndSize(s, n);
    if (*data == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
            return ERROR;
        PyErr_Clear();
        return DECLINE;
    }
    return OK;
}

/* An exact int in [0, 2**64): DECLINE for anything else (the Python path raises or reads it otherwise). Its range
 * told by its sign and bit count, then its digits read as they are (PyLong_AsUnsignedLongLong goes through
 * _PyLong_AsByteArray byte by byte: ~200 instructions for each time and id, ~20 a request of five spans). */
static int
as_u64(PyObject *v, uint64_t *out)
{
    if (!PyLong_CheckExact(v) || _PyLong_Sign(v) < 0 || _PyLong_NumBits(v) > 64)
        return DECLINE;
    *out = PyLong_AsUnsignedLongLongMask(v);
    return *out == (uint64_t)-1 && PyErr_Occurred() ? ERROR : OK;
}

/* A trace id, as int.to_bytes(16, "big") writes it. */
static int
as_u128_be(PyObject *v, unsigned char out[16])
{
    if (!PyLong_CheckExact(v))
        return DECLINE;
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t need = PyLong_AsNativeBytes(v, out, 16, Py_ASNATIVEBYTES_BIG_ENDIAN |
                                           Py_ASNATIVEBYTES_UNSIGNED_BUFFER | Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    if (need < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            return ERROR;
        PyErr_Clear();
        return DECLINE;
    }
    return need <= 16 ? OK : DECLINE;
#else
    if (_PyLong_AsByteArray((PyLongObject *)v, out, 16, 0 /* big endian */, 0 /* unsigned */) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return ERROR;
        PyErr_Clear();
        return DECLINE;
    }
    return OK;
#endif
}

/* -- attribute values (AnyValue) ------------------------------------------------------------------------ */

/* The encoded size of a scalar AnyValue (str, bool, int, float; exact types), or DECLINE/ERROR. */
static int
scalar_len(PyObject *v, Py_ssize_t *size)
{
    if (PyUnicode_CheckExact(v)) {
        const char *s;
        Py_ssize_t n;
        int r = utf8(v, &s, &n);
        if (r != OK)
            return r;
        *size = field_len(n);
    }
    else if (PyBool_Check(v))
        *size = 2;
    else if (PyLong_CheckExact(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow)  /* beyond int64: the Python path skips the attribute (ValueError) */
            return DECLINE;
        if (x == -1 && PyErr_Occurred())
            return ERROR;
        *size = 1 + varint_len((uint64_t)x);
    }
    else if (PyFloat_CheckExact(v))
        *size = 9;
    else
        return DECLINE;
    return OK;
}

/* Writes a scalar whose size scalar_len gave (so it is one of those types, and fits). */
static void
put_scalar(Writer *w, PyObject *v)
{
    if (PyUnicode_CheckExact(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);  /* kept by the str since scalar_len */
        put_field(w, 0x0a, s, n);
    }
    else if (PyBool_Check(v)) {
        put_byte(w, 0x10);
        put_byte(w, v == Py_True);
    }
    else if (PyLong_CheckExact(v)) {
        put_byte(w, 0x18);
        put_varint(w, (uint64_t)PyLong_AsLongLong(v));
    }
    else {
        double d = PyFloat_AS_DOUBLE(v);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        put_byte(w, 0x21);
        put_le64(w, bits);
    }
}

/* The encoded size of an AnyValue: a scalar, or a tuple/list of scalars (an ArrayValue). */
static int
value_len(PyObject *v, Py_ssize_t *size)
{
    if (!PyTuple_CheckExact(v) && !PyList_CheckExact(v))
        return scalar_len(v, size);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(v), values = 0;
    PyObject **items = PySequence_Fast_ITEMS(v);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t one;
        int r = scalar_len(items[i], &one);
        if (r != OK)
            return r;
        values += field_len(one);
    }
    *size = field_len(values);
    return OK;
}

static void
put_value(Writer *w, PyObject *v)
{
    if (!PyTuple_CheckExact(v) && !PyList_CheckExact(v)) {
        put_scalar(w, v);
        return;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(v), values = 0, one;
    PyObject **items = PySequence_Fast_ITEMS(v);
    for (Py_ssize_t i = 0; i < n; i++) {
        scalar_len(items[i], &one);  /* succeeded in value_len */
        values += field_len(one);
    }
    put_byte(w, 0x2a);
    put_varint(w, (uint64_t)values);
    for (Py_ssize_t i = 0; i < n; i++) {
        scalar_len(items[i], &one);
        put_byte(w, 0x0a);
        put_varint(w, (uint64_t)one);
        put_scalar(w, items[i]);
    }
}

/* One attribute: field 9, a KeyValue. */
static int
put_attribute(Writer *w, PyObject *key, PyObject *value)
{
    const char *k;
    Py_ssize_t klen, vlen;
    int r;
    if (!PyUnicode_CheckExact(key))
        return DECLINE;
    if ((r = utf8(key, &k, &klen)) != OK || (r = value_len(value, &vlen)) != OK)
        return r;
    Py_ssize_t kv = (klen ? field_len(klen) : 0) + field_len(vlen);
    if (reserve(w, field_len(kv)) < 0)
        return ERROR;
    put_byte(w, 0x4a);
    put_varint(w, (uint64_t)kv);
    if (klen) {
        put_field(w, 0x0a, k, klen);
    }
    put_byte(w, 0x12);
    put_varint(w, (uint64_t)vlen);
    put_value(w, value);
    return OK;
}

/* The span's attributes, in the mapping's order: a dict (no Python code runs while it is read: its
 * borrowed items stay alive), or the OrderedDict some SDKs switch to once the attribute limit is reached
 * (read through a list of its items, in its own order). */
static int
put_attributes(Writer *w, PyObject *attributes)
{
    PyObject *key, *value;
    int r = OK;
    if (PyDict_CheckExact(attributes)) {
        Py_ssize_t pos = 0;
        while (r == OK && PyDict_Next(attributes, &pos, &key, &value))
            r = put_attribute(w, key, value);
        return r;
    }
    if (!PyODict_CheckExact(attributes))
        return DECLINE;
    PyObject *items = PyMapping_Items(attributes);
    if (items == NULL)
        return ERROR;
    for (Py_ssize_t i = 0; r == OK && i < PyList_GET_SIZE(items); i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2)
            r = DECLINE;
        else
            r = put_attribute(w, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1));
    }
    Py_DECREF(items);
    return r;
}

/* (a span's attributes (fastspan.Attributes) keep _dict and dropped in slots, read by offset where bounded_type has
 * them (bounded_slots); else from its dict, under the guard. A Status is made by the program, its attributes kept
 * inline by CPython: read by getattr, which keeps them so) */
static OwnAttr g_bounded_dict, g_dropped;
static Py_ssize_t bounded_dict_off, bounded_dropped_off;
static int bounded_slots;

/* -- the span's other fields ------------------------------------------------------------------------------ */

/* `attributes` is the span's BoundedAttributes: its dict (field 9) and dropped count (field 10). */
static int
put_bounded(Writer *w, PyObject *attributes)
{
    int r = DECLINE;
    PyObject *dict, *dropped;
    if (bounded_slots) {  /* (held: the caller's attributes object holds them, but put_attributes may run code) */
        dict = OWN_SLOT(attributes, bounded_dict_off);
        dropped = OWN_SLOT(attributes, bounded_dropped_off);
        if (dict == NULL || dropped == NULL)
            return DECLINE;
        Py_INCREF(dict);
        Py_INCREF(dropped);
    }
    else {
        dict = own_attr(attributes, s_dict, &g_bounded_dict);
        dropped = dict ? own_attr(attributes, s_dropped, &g_dropped) : NULL;
    }
    if (dropped == NULL) {
        r = ERROR;
        goto done;
    }
    if (!PyDict_Check(dict) || !PyLong_CheckExact(dropped))
        goto done;
    if ((r = put_attributes(w, dict)) != OK)
        goto done;
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(dropped, &overflow);
    if (overflow || (n == -1 && PyErr_Occurred())) {
        r = overflow ? DECLINE : ERROR;
        goto done;
    }
    if (n) {
        if ((r = reserve(w, 11)) != OK)
            goto done;
        put_byte(w, 0x50);
        put_varint(w, (uint64_t)n);
    }
    r = OK;
done:
    Py_XDECREF(dict);
    Py_XDECREF(dropped);
    return r;
}

/* Field 15, as otlp_encoder._status writes it (Status read by its fields: an exact Status). */
static int
put_status(Writer *w, PyObject *status)
{
    if (status == unset_status) {
        if (reserve(w, 2) < 0)
            return ERROR;
        put(w, "\x7a\x00", 2);
        return OK;
    }
    if (status == Py_None)
        return OK;
    if (Py_TYPE(status) != (PyTypeObject *)status_type)
        return DECLINE;
    int r = DECLINE, code = -1;
    PyObject *member = PyObject_GetAttr(status, s_status_code);
    PyObject *message = member ? PyObject_GetAttr(status, s_description) : NULL;
    if (message == NULL) {
        r = ERROR;
        goto done;
    }
    for (Py_ssize_t i = 0; i < n_codes; i++)
        if (member == code_members[i])
            code = code_wire[i];
    if (code < 0 || (message != Py_None && !PyUnicode_CheckExact(message)))
        goto done;
    const char *m = NULL;
    Py_ssize_t mlen = 0;
    if (message != Py_None && (r = utf8(message, &m, &mlen)) != OK)
        goto done;
    Py_ssize_t payload = (mlen ? field_len(mlen) : 0) + (code ? 2 : 0);
    if ((r = reserve(w, field_len(payload))) != OK)
        goto done;
    put_byte(w, 0x7a);
    put_varint(w, (uint64_t)payload);
    if (mlen) {
        put_field(w, 0x12, m, mlen);
    }
    if (code) {
        put_byte(w, 0x18);
        put_byte(w, (unsigned char)code);
    }
    r = OK;
done:
    Py_XDECREF(member);
    Py_XDECREF(message);
    return r;
}

/* Fields 7 and 8 (start and end, fixed64), each left out when 0 or None. */
static int
put_time(Writer *w, unsigned char tag, PyObject *t)
{
    uint64_t ns;
    int r;
    if (t == Py_None)
        return OK;
    if ((r = as_u64(t, &ns)) != OK)
        return r;
    if (ns) {
        put_byte(w, tag);
        put_le64(w, ns);
    }
    return OK;
}

static int
encode(Writer *w, PyObject **f)
{
    int r;
    unsigned char ids[16];
    uint64_t span_id, parent_id = 0;
    int remote = 0, has_parent = 0;
    PyObject *ctx = f[F_CONTEXT], *parent = f[F_PARENT];

    /* SpanContext is a tuple: (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid) */
    if (!PyTuple_Check(ctx) || PyTuple_GET_SIZE(ctx) != 6)
        return DECLINE;
    if ((r = as_u128_be(PyTuple_GET_ITEM(ctx, 0), ids)) != OK || (r = as_u64(PyTuple_GET_ITEM(ctx, 1), &span_id)) != OK)
        return r;
    PyObject *state = PyTuple_GET_ITEM(ctx, 4);
    if (state != empty_state) {
        int full = PyObject_IsTrue(state);  /* a TraceState's len: Python code, as in the Python path */
        if (full)
            return full < 0 ? ERROR : DECLINE;
    }
    if (parent != Py_None) {
        if (!PyTuple_Check(parent) || PyTuple_GET_SIZE(parent) != 6)
            return DECLINE;
        if ((r = as_u64(PyTuple_GET_ITEM(parent, 1), &parent_id)) != OK)
            return r;
        if ((remote = PyObject_IsTrue(PyTuple_GET_ITEM(parent, 2))) < 0)
            return ERROR;
        has_parent = 1;
    }
    /* events and links: () until the first one (then the SDK's BoundedList: the Python path's) */
    if (!PyTuple_CheckExact(f[F_EVENTS]) || !PyTuple_CheckExact(f[F_LINKS]))
        return DECLINE;

    PyObject *name = f[F_NAME], *kind = f[F_KIND];
    const char *n = NULL;
    Py_ssize_t nlen = 0;
    int wire_kind = -1;
    if (!PyUnicode_CheckExact(name) || (r = utf8(name, &n, &nlen)) != OK)
        return PyUnicode_CheckExact(name) ? r : DECLINE;
    for (Py_ssize_t i = 0; i < n_kinds; i++)
        if (kind == kind_members[i])
            wire_kind = kind_wire[i];
    if (wire_kind < 0)
        return DECLINE;

    if (reserve(w, 18 + 10 + 10 + field_len(nlen) + 2 + 18) < 0)
        return ERROR;
    put(w, "\x0a\x10", 2);
    put(w, ids, 16);
    put(w, "\x12\x08", 2);
    put_be64(w, span_id);
    if (has_parent) {
        put(w, "\x22\x08", 2);
        put_be64(w, parent_id);
    }
    if (nlen) {
        put_field(w, 0x2a, n, nlen);
    }
    put_byte(w, 0x30);
    put_byte(w, (unsigned char)wire_kind);
    if ((r = put_time(w, 0x39, f[F_START])) != OK || (r = put_time(w, 0x41, f[F_END])) != OK)
        return r;

    PyObject *attributes = f[F_ATTRIBUTES];
    if (Py_TYPE(attributes) == (PyTypeObject *)bounded_type) {
        if ((r = put_bounded(w, attributes)) != OK)
            return r;
    }
    else if (attributes != Py_None)
        return DECLINE;
    if ((r = put_status(w, f[F_STATUS])) != OK)
        return r;
    if (reserve(w, 6) < 0)
        return ERROR;
    put(w, remote ? "\x85\x01\x00\x03\x00\x00" : "\x85\x01\x00\x01\x00\x00", 6);  /* flags, field 16 */
    return OK;
}

/* -- the module's functions ------------------------------------------------------------------------------- */

/* f's fields held (new references) from a dict of them or from the slots of a span of span_type: OK, DECLINE
 * (one missing; none held) or ERROR */
static int
read_fields(PyObject *from, PyObject **f)
{
    int slots = span_slots && (PyObject *)Py_TYPE(from) == span_type;
    if (!slots && !PyDict_Check(from))
        return DECLINE;
    for (int i = 0; i < N_FIELDS; i++) {
        f[i] = slots ? OWN_SLOT(from, field_off[i]) : PyDict_GetItemWithError(from, field_keys[i]);
        if (f[i] == NULL) {
            for (int j = 0; j < i; j++)
                Py_CLEAR(f[j]);
            return PyErr_Occurred() ? ERROR : DECLINE;
        }
        Py_INCREF(f[i]);  /* held strongly: reading a TraceState's len or a Status runs Python code */
    }
    return OK;
}

/* the span's bytes (f: its fields), or NULL: None (declined) or an error set */
static PyObject *
encode_fields(PyObject **f, int *declined)
{
    PyObject *result = NULL;
    Writer w;
    w.data = w.stack;
    w.len = 0;
    w.cap = sizeof(w.stack);
    int r = encode(&w, f);
    if (r == OK)
        result = PyBytes_FromStringAndSize((const char *)w.data, w.len);
    release(&w);
    *declined = r == DECLINE;
    return result;
}

/* encode_span(span or its fields' dict): its bytes, or None where this code declines it */
static PyObject *
encode_span(PyObject *module, PyObject *from)
{
    PyObject *f[N_FIELDS] = {NULL};
    if (bounded_type == NULL)
        Py_RETURN_NONE;
    int r = read_fields(from, f);
    if (r != OK) {
        if (r == ERROR)
            return NULL;
        Py_RETURN_NONE;
    }
    int declined;
    PyObject *result = encode_fields(f, &declined);
    for (int i = 0; i < N_FIELDS; i++)
        Py_DECREF(f[i]);
    if (result == NULL && declined)
        Py_RETURN_NONE;
    return result;  /* NULL with the exception set where it failed */
}

/* Encoder.preencode's common case: the Encoded (data, resource, instrumentation scope) of a span of
 * trace-run's class, made without running Python code; None where encode_span declines. */
static PyObject *
preencode(PyObject *module, PyObject *span)
{
    PyObject *f[N_FIELDS] = {NULL};
    if (encoded_type == NULL || bounded_type == NULL || !span_slots || (PyObject *)Py_TYPE(span) != span_type)
        Py_RETURN_NONE;
    PyObject *resource = OWN_SLOT(span, resource_off), *scope = OWN_SLOT(span, scope_off);
    if (resource == NULL || scope == NULL)
        Py_RETURN_NONE;
    int r = read_fields(span, f);
    if (r != OK) {
        if (r == ERROR)
            return NULL;
        Py_RETURN_NONE;
    }
    Py_INCREF(resource);  /* (encoding may run Python code) */
    Py_INCREF(scope);
    int declined;
    PyObject *result = NULL, *data = encode_fields(f, &declined);
    for (int i = 0; i < N_FIELDS; i++)
        Py_DECREF(f[i]);
    if (data == NULL) {
        if (declined)
            result = Py_NewRef(Py_None);
        goto done;
    }
    result = ((PyTypeObject *)encoded_type)->tp_alloc((PyTypeObject *)encoded_type, 3);
    if (result == NULL)
        goto done;
    PyTuple_SET_ITEM(result, 0, data);  /* the references move into the tuple */
    PyTuple_SET_ITEM(result, 1, resource);
    PyTuple_SET_ITEM(result, 2, scope);
    data = resource = scope = NULL;
    /* Left out of the garbage collector's lists: it waits in the export queue long enough to age through
     * every generation, and each collection would walk it (and count it towards the next full one). It
     * cannot be part of a cycle: bytes, and a resource and a scope that never refer to a queued span. */
    PyObject_GC_UnTrack(result);
done:
    Py_XDECREF(data);
    Py_XDECREF(resource);
    Py_XDECREF(scope);
    return result;
}

/* untrack(item): an Encoded the Python path made (a span preencode declined), or a batch taken from the queue (an
 * exact tuple of untracked Encoded), left out of the garbage collector's lists as preencode leaves its own (see
 * there; a collection never untracks such a tuple itself: an Encoded is a tuple subclass, which it counts as possibly
 * tracked). Anything else is left as it is. */
static PyObject *
untrack(PyObject *module, PyObject *item)
{
    if (encoded_type == NULL || !PyObject_GC_IsTracked(item))
        Py_RETURN_NONE;
    if ((PyObject *)Py_TYPE(item) == encoded_type) {
        PyObject_GC_UnTrack(item);
    } else if (PyTuple_CheckExact(item)) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(item); i++) {
            PyObject *one = PyTuple_GET_ITEM(item, i);
            if ((PyObject *)Py_TYPE(one) != encoded_type || PyObject_GC_IsTracked(one))
                Py_RETURN_NONE;
        }
        PyObject_GC_UnTrack(item);
    }
    Py_RETURN_NONE;
}

/* Encoder.encode's loop over a batch, its common case: frame(spans, start, stop, entries) appends each item of
 * spans[start:stop] that is exactly an Encoded whose (resource, scope) group is already in `entries` (keyed by
 * (id(resource), id(scope)), as Encoder.encode keeps it, each value a (scope key, bytearray) pair) to its group's
 * bytearray: the field's header (tag 2, the length) and the span's bytes, as the Python loop does. It stops at the
 * first item it was not written for (another type, data not bytes, a new group, an entry not of that shape) and
 * gives its index (stop where it did them all): the Python loop does that one. No Python code runs here. The
 * groups last used are looked up by pointer, held for the call; the dict only when the group changes to one not
 * among them. */
#define FRAME_GROUPS 8

static PyObject *
frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "frame(spans, start, stop, entries)");
        return NULL;
    }
    PyObject *spans = args[0], *entries = args[3];
    Py_ssize_t i = PyLong_AsSsize_t(args[1]), stop;
    if (i == -1 && PyErr_Occurred())
        return NULL;
    stop = PyLong_AsSsize_t(args[2]);
    if (stop == -1 && PyErr_Occurred())
        return NULL;
    if (encoded_type == NULL || !(PyList_CheckExact(spans) || PyTuple_CheckExact(spans)) ||
        !PyDict_CheckExact(entries) || i < 0)
        return PyLong_FromSsize_t(i);
    /* strong references, for the call: making a key can run the garbage collector (and finalizers) */
    PyObject *res[FRAME_GROUPS], *scp[FRAME_GROUPS], *arr[FRAME_GROUPS];
    int held = 0, next = 0, last = -1, failed = 0;
    for (; i < stop && i < PySequence_Fast_GET_SIZE(spans); i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(spans, i);
        if ((PyObject *)Py_TYPE(item) != encoded_type || PyTuple_GET_SIZE(item) != 3)
            break;
        PyObject *data = PyTuple_GET_ITEM(item, 0), *resource = PyTuple_GET_ITEM(item, 1),
                 *scope = PyTuple_GET_ITEM(item, 2);
        if (!PyBytes_CheckExact(data))
            break;
        int g = last;
        if (g < 0 || res[g] != resource || scp[g] != scope) {
            for (g = 0; g < held; g++)
                if (res[g] == resource && scp[g] == scope)
                    break;
            if (g == held) {
                /* held for the step: the item's data, resource and scope stay alive while the key is made */
                Py_INCREF(item);
                PyObject *a = PyLong_FromVoidPtr(resource), *b = a ? PyLong_FromVoidPtr(scope) : NULL;
                PyObject *key = b ? PyTuple_Pack(2, a, b) : NULL;
                Py_XDECREF(a);
                Py_XDECREF(b);
                PyObject *entry = key ? PyDict_GetItemWithError(entries, key) : NULL;
                Py_XDECREF(key);
                if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2 ||
                    !PyByteArray_CheckExact(PyTuple_GET_ITEM(entry, 1))) {
                    failed = PyErr_Occurred() != NULL;  /* else a new group: the Python loop makes it */
                    Py_DECREF(item);
                    break;
                }
                if (held < FRAME_GROUPS)
                    g = held++;
                else {
                    g = next;
                    next = (next + 1) % FRAME_GROUPS;
                    Py_DECREF(res[g]);
                    Py_DECREF(scp[g]);
                    Py_DECREF(arr[g]);
                }
                res[g] = Py_NewRef(resource);
                scp[g] = Py_NewRef(scope);
                arr[g] = Py_NewRef(PyTuple_GET_ITEM(entry, 1));
                int moved = i >= PySequence_Fast_GET_SIZE(spans) || PySequence_Fast_GET_ITEM(spans, i) != item;
                Py_DECREF(item);
                if (moved)
                    break;  /* a finalizer changed the batch: the Python loop reads the item anew */
            }
        }
        last = g;
        PyObject *pieces = arr[g];
        Py_ssize_t n = PyBytes_GET_SIZE(data), size = PyByteArray_GET_SIZE(pieces);
        Py_ssize_t need = size + 1 + varint_len((uint64_t)n) + n;
        if (need + 1 > ((PyByteArrayObject *)pieces)->ob_alloc) {
            /* grown by doubling (bytearray grows by itself only to the exact size, for appends this size) */
            if (PyByteArray_Resize(pieces, need > 2 * size ? need : 2 * size) < 0) {
                failed = 1;
                break;
            }
        }
        if (PyByteArray_Resize(pieces, need) < 0) {
            failed = 1;
            break;
        }
        Writer w;  /* writes into the bytearray's room, made above */
        w.data = (unsigned char *)PyByteArray_AS_STRING(pieces);
        w.len = size;
        w.cap = need;
        put_byte(&w, 0x12);
        put_varint(&w, (uint64_t)n);
        put(&w, PyBytes_AS_STRING(data), n);
    }
    for (int g = 0; g < held; g++) {
        Py_DECREF(res[g]);
        Py_DECREF(scp[g]);
        Py_DECREF(arr[g]);
    }
    return failed ? NULL : PyLong_FromSsize_t(i);
}

/* (member, wire value) pairs into the arrays compared by identity. */
static int
read_enum(PyObject *pairs, PyObject **members, unsigned char *wire, Py_ssize_t *count)
{
    if (!PyTuple_Check(pairs) || PyTuple_GET_SIZE(pairs) > MAX_ENUM) {
        PyErr_SetString(PyExc_ValueError, "a tuple of at most 8 (member, value) pairs");
        return -1;
    }
    for (Py_ssize_t i = 0; i < *count; i++)
        Py_CLEAR(members[i]);
    *count = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(pairs); i++) {
        PyObject *member;
        unsigned char value;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(pairs, i), "Ob", &member, &value))
            return -1;
        Py_INCREF(member);
        members[i] = member;
        wire[i] = value;
        *count = i + 1;
    }
    return 0;
}

static PyObject *
configure(PyObject *module, PyObject *args)
{
    PyObject *kinds, *codes, *unset, *status, *empty, *bounded, *span, *encoded;
    if (!PyArg_ParseTuple(args, "OOOO!OO!OO!:configure", &kinds, &codes, &unset, &PyType_Type, &status, &empty,
                          &PyType_Type, &bounded, &span, &PyType_Type, &encoded))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)encoded, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "Encoded must be a tuple subclass");
        return NULL;
    }
    Py_CLEAR(bounded_type);  /* unconfigured (both functions decline) until all is set */
    Py_CLEAR(encoded_type);
    if (read_enum(kinds, kind_members, kind_wire, &n_kinds) < 0 ||
        read_enum(codes, code_members, code_wire, &n_codes) < 0)
        return NULL;
    Py_INCREF(unset);
    Py_XSETREF(unset_status, unset);
    Py_INCREF(status);
    Py_XSETREF(status_type, status);
    Py_INCREF(empty);
    Py_XSETREF(empty_state, empty);
    Py_XSETREF(span_type, Py_NewRef(span));
    span_slots = 0;
    if (PyType_Check(span)) {
        PyObject *places[2] = {k_resource, k_scope};
        Py_ssize_t place_off[2];
        span_slots = own_slot_offsets((PyTypeObject *)span, field_keys, N_FIELDS, field_off)
                     && own_slot_offsets((PyTypeObject *)span, places, 2, place_off);
        resource_off = place_off[0];
        scope_off = place_off[1];
    }
    bounded_dict_off = own_slot_offset((PyTypeObject *)bounded, s_dict);
    bounded_dropped_off = own_slot_offset((PyTypeObject *)bounded, s_dropped);
    bounded_slots = bounded_dict_off > 0 && bounded_dropped_off > 0;
    Py_INCREF(bounded);
    bounded_type = bounded;
    encoded_type = Py_NewRef(encoded);
    Py_RETURN_NONE;
}


/* -- an ended span's way to the export queue: exporthealth.CountingProcessor.on_end (with QueueBudget.admit's
 * steps) and the SDK's BatchProcessor.emit
 *
 * The same steps as those Python methods, on the same objects (CountingProcessor's and QueueBudget's fields read
 * and written in their slots, the SDK's processor's in its instance dict, where the Python code reads and writes
 * them as attributes). Where anything is not as expected
 * (another span class, a field missing), the Python method runs instead, before anything was changed: its
 * messages and exceptions are the program's to see. configure_on_end() gives what they need; until then the
 * Python method runs. (Span.end, which calls on_end, is agent/_span_native.c's.) */

static PyObject *end_span_type;     /* fastspan.Span */
static Py_ssize_t end_context_off;  /* where it keeps _context (-1: not a slot; the Python method runs) */
static PyObject *python_on_end;     /* CountingProcessor's Python on_end(self, span) */
static PyObject *budget_type;       /* exporthealth.QueueBudget (NULL: its fields are not slots; admit is called) */
static PyObject *counting_type;     /* exporthealth.CountingProcessor (NULL: not slots; the Python method runs) */
/* their fields' offsets (core/own_attr.h's slots): CountingProcessor's in the order counting_on_end reads them,
 * QueueBudget's: _lock, then spans, max_spans, bytes, max_bytes (the order of admit's compares) */
#define N_COUNTING 7
static Py_ssize_t counting_off[N_COUNTING];
enum { B_LOCK, B_SPANS, B_MAX_SPANS, B_BYTES, B_MAX_BYTES, N_BUDGET };
static Py_ssize_t budget_off[N_BUDGET];
static PyObject *budget_admit;      /* its admit function */
static PyObject *k_lock, *s_build, *k_counter, *k_pending, *k_encode, *k_prepare, *k_admit,
    *k_on_end, *k_sampled_only, *s_spans, *s_bytes, *s_max_spans, *s_max_bytes;

/* borrowed items of `dict` under `keys` (a long-lived object's: memos[i] keeps keys[i]'s, own_attr.h); 0 if one is
 * missing (no exception), -1 on an error */
static int
items_of(PyObject *dict, PyObject **keys, PyObject **out, int n, OwnMemo *memos)
{
    for (int i = 0; i < n; i++) {
        out[i] = own_memo_get(dict, keys[i], &memos[i]);
        if (out[i] == NULL)
            return PyErr_Occurred() ? -1 : 0;
    }
    return 1;
}

static LockMethods otlp_locks;  /* core/own_attr.h's lock_call */

static int
unlock(PyObject *lock)
{
    PyObject *r = lock_call(lock, OWN_RELEASE, &otlp_locks);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* QueueBudget.admit(item) on the budget's own fields (its slots); 1 admitted, 0 refused, -1 error */
static int
admit_inline(PyObject *budget, PyObject *item)
{
    int answer = -1;
    PyObject *lock = OWN_SLOT(budget, budget_off[B_LOCK]);
    if (lock == NULL) {
        PyErr_SetString(PyExc_AttributeError, "QueueBudget has no _lock");
        return -1;
    }
    Py_INCREF(lock);
    Py_ssize_t n = 0;
    if ((PyObject *)Py_TYPE(item) == encoded_type && PyTuple_GET_SIZE(item) > 0) {
        n = PyObject_Length(PyTuple_GET_ITEM(item, 0));
        if (n < 0)
            goto out;
    }
    PyObject *size = PyLong_FromSsize_t(n), *more_spans = NULL, *more_bytes = NULL;
    if (size == NULL)
        goto out;
    PyObject *r = lock_call(lock, OWN_ACQUIRE, &otlp_locks);
    if (r == NULL) {
        Py_DECREF(size);
        goto out;
    }
    Py_DECREF(r);
    PyObject *v[4];
    int found = 1;
    for (int i = 0; i < 4; i++)  /* spans, max_spans, bytes, max_bytes */
        if ((v[i] = OWN_SLOT(budget, budget_off[B_SPANS + i])) == NULL)
            found = 0;
    if (!found)
        PyErr_SetString(PyExc_AttributeError, "QueueBudget lacks a count");
    else {
        for (int i = 0; i < 4; i++)
            Py_INCREF(v[i]);
        int full = PyObject_RichCompareBool(v[0], v[1], Py_GE);
        if (full == 0) {
            more_bytes = PyNumber_Add(v[2], size);
            full = more_bytes ? PyObject_RichCompareBool(more_bytes, v[3], Py_GT) : -1;
        }
        if (full == 1) {
            answer = 0;
        } else if (full == 0) {
            PyObject *one = PyLong_FromLong(1);
            more_spans = one ? PyNumber_Add(v[0], one) : NULL;
            Py_XDECREF(one);
            if (more_spans != NULL) {
                own_slot_set(budget, budget_off[B_SPANS], more_spans);
                own_slot_set(budget, budget_off[B_BYTES], more_bytes);
                answer = 1;
            }
        }
        for (int i = 0; i < 4; i++)
            Py_DECREF(v[i]);
    }
    Py_XDECREF(more_spans);
    Py_XDECREF(more_bytes);
    Py_DECREF(size);
    if (answer < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        unlock(lock);
        PyErr_Restore(type, value, tb);
    } else if (unlock(lock) < 0) {
        answer = -1;
    }
out:
    Py_DECREF(lock);
    return answer;
}

/* The SDK's BatchProcessor.emit(item) for its common case, on its own fields (configure_emit is given it only
 * where its code is the one read here, names for names): not shut down, in the process that made it, its queue
 * not full; the worker woken as it would wake it. 1 done, 0 not that case (emit runs: its messages, its reset
 * after a fork), -1 error. */
static PyObject *sdk_emit;     /* BatchProcessor.emit */
static PyObject *event_type;   /* threading.Event, whose is_set is `return self._flag` */
static PyObject *deque_type;   /* collections.deque */
static PyObject *k_shutdown, *k_pid, *k_queue, *k_max_queue, *k_max_batch, *k_awaken, *k_flag, *s_appendleft,
    *s_set;

/* this process's id, as os.getpid() gives it, without a system call per span: set when the module is loaded and
 * again in the child of every fork (pthread_atfork, which os.fork and a fork from C code both run) */
static volatile pid_t this_pid;

static void
after_fork_in_child(void)
{
    this_pid = getpid();
}

static int
emit_inline(PyObject *processor, PyObject *item)
{
    PyObject *state = PyObject_GenericGetDict(processor, NULL);
    if (state == NULL)
        return -1;
    PyObject *keys[5] = {k_shutdown, k_pid, k_queue, k_max_queue, k_max_batch};
    PyObject *v[5];
    static OwnMemo memos[5];
    int answer = 0, found = items_of(state, keys, v, 5, memos);
    if (found <= 0 || v[0] != Py_False || !PyLong_CheckExact(v[1]) || (PyObject *)Py_TYPE(v[2]) != deque_type ||
        !PyLong_CheckExact(v[3]) || !PyLong_CheckExact(v[4])) {
        Py_DECREF(state);
        return found < 0 ? -1 : 0;
    }
    long pid = PyLong_AsLong(v[1]);
    if (pid == -1 && PyErr_Occurred()) {
        Py_DECREF(state);
        return -1;
    }
    if (pid != (long)this_pid) {  /* a child of a fork: emit resets the processor first */
        Py_DECREF(state);
        return 0;
    }
    PyObject *queue = Py_NewRef(v[2]);
    Py_ssize_t max_queue = PyLong_AsSsize_t(v[3]), max_batch = PyLong_AsSsize_t(v[4]);
    if (PyErr_Occurred()) {
        answer = -1;
        goto out;
    }
    Py_ssize_t n = PyObject_Length(queue);
    if (n < 0) {
        answer = -1;
        goto out;
    }
    if (n == max_queue)
        goto out;  /* emit's warning, and its count of the dropped one */
    PyObject *r = PyObject_CallMethodOneArg(queue, s_appendleft, item);
    if (r == NULL) {
        answer = -1;
        goto out;
    }
    Py_DECREF(r);
    answer = 1;
    n = PyObject_Length(queue);
    if (n < 0) {
        answer = -1;
        goto out;
    }
    if (n >= max_batch) {
        PyObject *awaken = PyDict_GetItemWithError(state, k_awaken);
        if (awaken == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_AttributeError, "_worker_awaken");
            answer = -1;
            goto out;
        }
        Py_INCREF(awaken);
        int is_set = -1;
        if ((PyObject *)Py_TYPE(awaken) == event_type) {
            PyObject *event_state = PyObject_GenericGetDict(awaken, NULL);
            PyObject *flag = event_state ? PyDict_GetItemWithError(event_state, k_flag) : NULL;
            is_set = flag ? PyObject_IsTrue(flag) : -1;
            if (flag == NULL && event_state != NULL && !PyErr_Occurred())
                PyErr_SetString(PyExc_AttributeError, "_flag");
            Py_XDECREF(event_state);
        } else {
            PyObject *got = PyObject_CallMethod(awaken, "is_set", NULL);
            is_set = got ? PyObject_IsTrue(got) : -1;
            Py_XDECREF(got);
        }
        if (is_set == 0) {
            PyObject *done = PyObject_CallMethodNoArgs(awaken, s_set);
            is_set = done ? 1 : -1;
            Py_XDECREF(done);
        }
        Py_DECREF(awaken);
        if (is_set < 0)
            answer = -1;
    }
out:
    Py_DECREF(queue);
    Py_DECREF(state);
    return answer;
}

/* the item (new reference) prepare or the C encoder gives for a sampled span; Py_None: nothing to queue */
static PyObject *
prepared(PyObject *encode, PyObject *prepare, PyObject *span)
{
    if (encode != Py_None) {
        PyObject *encoded = PyCFunction_Check(encode) && PyCFunction_GET_FUNCTION(encode) == (PyCFunction)preencode
            ? preencode(NULL, span) : PyObject_CallOneArg(encode, span);
        if (encoded == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                return NULL;
            PyErr_Clear();  /* a failure of the extension's: prepare's own way, as on_end does */
        } else if (encoded != Py_None) {
            return encoded;
        } else {
            Py_DECREF(encoded);
        }
        return PyObject_CallOneArg(prepare, span);
    }
    if (prepare != Py_None)
        return PyObject_CallOneArg(prepare, span);
    return Py_NewRef(span);
}

static PyObject *
counting_on_end(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || python_on_end == NULL) {
        if (python_on_end != NULL)
            return PyObject_Vectorcall(python_on_end, args, nargs, NULL);
        PyErr_SetString(PyExc_TypeError, "on_end(self, span)");
        return NULL;
    }
    PyObject *self = args[0], *span = args[1];
    PyObject *flags = NULL;
    if (end_span_type != NULL && end_context_off > 0 && (PyObject *)Py_TYPE(span) == end_span_type) {
        PyObject *context = OWN_SLOT(span, end_context_off);
        if (context != NULL && PyTuple_Check(context) && PyTuple_GET_SIZE(context) >= 4 &&
            PyLong_Check(PyTuple_GET_ITEM(context, 3)))
            flags = Py_NewRef(PyTuple_GET_ITEM(context, 3));
    }
    if (flags == NULL)  /* another span, or fields not as read here */
        return PyObject_Vectorcall(python_on_end, args, 2, NULL);
    long sampled = PyLong_AsLong(flags) & 1;
    Py_DECREF(flags);
    if (sampled == -1 && PyErr_Occurred())
        return NULL;
    PyObject *held[N_COUNTING] = {NULL}, *result = NULL, *item = NULL;
    if (counting_type == NULL || (PyObject *)Py_TYPE(self) != counting_type)
        return PyObject_Vectorcall(python_on_end, args, 2, NULL);  /* (a subclass: its own fields maybe) */
    for (int i = 0; i < N_COUNTING; i++) {
        PyObject *v = OWN_SLOT(self, counting_off[i]);
        if (v == NULL)  /* a field not set: the Python method (its AttributeError) */
            return PyObject_Vectorcall(python_on_end, args, 2, NULL);
    }
    for (int i = 0; i < N_COUNTING; i++)
        held[i] = Py_NewRef(OWN_SLOT(self, counting_off[i]));
    PyObject *count = PyIter_Next(held[0]);  /* next(self._counter) */
    if (count == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetNone(PyExc_StopIteration);
        goto done;
    }
    Py_DECREF(count);
    int pending = PyObject_IsTrue(held[1]);
    if (pending < 0)
        goto done;
    if (pending) {
        PyObject *r = PyObject_CallMethodNoArgs(self, s_build);
        if (r == NULL)
            goto done;
        Py_DECREF(r);
    }
    PyObject *admit = held[4], *on_end = held[5];
    if (sampled) {
        item = prepared(held[2], held[3], span);
        if (item == NULL)
            goto done;
        if (item == Py_None) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        if (admit != Py_None) {
            int ok;
            if (PyMethod_Check(admit) && PyMethod_GET_FUNCTION(admit) == budget_admit &&
                (PyObject *)Py_TYPE(PyMethod_GET_SELF(admit)) == budget_type && budget_type != NULL) {
                ok = admit_inline(PyMethod_GET_SELF(admit), item);
            } else {
                PyObject *r = PyObject_CallOneArg(admit, item);
                ok = r == NULL ? -1 : PyObject_IsTrue(r);
                Py_XDECREF(r);
            }
            if (ok <= 0) {
                if (ok == 0)
                    result = Py_NewRef(Py_None);  /* over the queue's bounds: dropped, counted as ended */
                goto done;
            }
        }
        if (sdk_emit != NULL && PyMethod_Check(on_end) && PyMethod_GET_FUNCTION(on_end) == sdk_emit) {
            int done = emit_inline(PyMethod_GET_SELF(on_end), item);
            if (done < 0)
                goto done;
            result = done ? Py_NewRef(Py_None) : PyObject_CallOneArg(on_end, item);
        } else {
            result = PyObject_CallOneArg(on_end, item);
        }
    } else {
        int sampled_only = PyObject_IsTrue(held[6]);
        if (sampled_only < 0)
            goto done;
        result = sampled_only ? Py_NewRef(Py_None) : PyObject_CallOneArg(on_end, span);
    }
    if (result != NULL) {
        Py_DECREF(result);
        result = Py_NewRef(Py_None);
    }
done:
    Py_XDECREF(item);
    for (int i = 0; i < N_COUNTING; i++)
        Py_XDECREF(held[i]);
    return result;
}

static PyObject *
configure_on_end(PyObject *module, PyObject *args)
{
    PyObject *on_end, *budget, *admit, *span, *counting;
    if (!PyArg_ParseTuple(args, "OO!OO!O!:configure_on_end", &on_end, &PyType_Type, &budget, &admit, &PyType_Type,
                          &span, &PyType_Type, &counting))
        return NULL;
    Py_CLEAR(python_on_end);
    Py_XSETREF(end_span_type, Py_NewRef(span));
    end_context_off = own_slot_offset((PyTypeObject *)span, field_keys[F_CONTEXT]);
    PyObject *counting_keys[N_COUNTING] = {k_counter, k_pending, k_encode, k_prepare, k_admit, k_on_end,
                                           k_sampled_only};
    PyObject *budget_keys[N_BUDGET] = {k_lock, s_spans, s_max_spans, s_bytes, s_max_bytes};
    int slots = own_slot_offsets((PyTypeObject *)counting, counting_keys, N_COUNTING, counting_off);
    Py_XSETREF(counting_type, slots ? Py_NewRef(counting) : NULL);
    slots = own_slot_offsets((PyTypeObject *)budget, budget_keys, N_BUDGET, budget_off);
    Py_XSETREF(budget_type, slots ? Py_NewRef(budget) : NULL);
    Py_XSETREF(budget_admit, Py_NewRef(admit));
    python_on_end = Py_NewRef(on_end);
    Py_RETURN_NONE;
}

static PyObject *
configure_emit(PyObject *module, PyObject *args)
{
    PyObject *emit, *event, *deque;
    if (!PyArg_ParseTuple(args, "OO!O!:configure_emit", &emit, &PyType_Type, &event, &PyType_Type, &deque))
        return NULL;
    Py_CLEAR(sdk_emit);
    Py_XSETREF(event_type, Py_NewRef(event));
    Py_XSETREF(deque_type, Py_NewRef(deque));
    if (emit != Py_None)
        sdk_emit = Py_NewRef(emit);
    Py_RETURN_NONE;
}

static PyObject *
process_id(PyObject *module, PyObject *unused)
{
    return PyLong_FromLong((long)this_pid);
}

static PyObject *
as_method(PyObject *module, PyObject *function)
{
    return PyInstanceMethod_New(function);
}

static PyMethodDef methods[] = {
    {"encode_span", encode_span, METH_O,
     "encode_span(span or fields) -> bytes | None: the OTLP Span of a trace-run span (its slots, or a dict of its fields "
     "by name), None if not the common case."},
    {"preencode", preencode, METH_O,
     "preencode(span) -> Encoded | None: Encoder.preencode of a trace-run span, None if not the common case."},
    {"untrack", untrack, METH_O,
     "untrack(item): an Encoded made in Python, or a tuple of untracked ones, left out of the garbage collector's "
     "lists, as preencode's."},
    {"frame", (PyCFunction)(void (*)(void))frame, METH_FASTCALL,
     "frame(spans, start, stop, entries) -> int: Encoder.encode's loop over spans[start:stop], its common case; "
     "the index of the first item left to the Python loop (stop: none)."},
    {"configure", configure, METH_VARARGS,
     "configure(kinds, codes, unset_status, status_type, empty_trace_state, bounded_attributes_type, span_type, "
     "encoded_type)"},
    {"counting_on_end", (PyCFunction)(void (*)(void))counting_on_end, METH_FASTCALL,
     "counting_on_end(processor, span): exporthealth.CountingProcessor.on_end in C (installed by exporthealth)."},
    {"configure_on_end", configure_on_end, METH_VARARGS,
     "configure_on_end(python_on_end, queue_budget_type, queue_budget_admit, span_type, counting_processor_type)"},
    {"configure_emit", configure_emit, METH_VARARGS,
     "configure_emit(batch_processor_emit or None, event_type, deque_type): the SDK's emit done here (None: called)."},
    {"process_id", process_id, METH_NOARGS, "process_id(): the process id emit is compared with (os.getpid()'s)."},
    {"as_method", as_method, METH_O, "as_method(function): a method of a class, bound to its instances."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_otlp_native", "trace-run's OTLP span encoder, the common case in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__otlp_native(void)
{
    for (int i = 0; i < N_FIELDS; i++)
        if ((field_keys[i] = PyUnicode_InternFromString(field_names[i])) == NULL)
            return NULL;
    if ((s_dict = PyUnicode_InternFromString("_dict")) == NULL ||
        (s_dropped = PyUnicode_InternFromString("dropped")) == NULL ||
        (s_status_code = PyUnicode_InternFromString("_status_code")) == NULL ||
        (s_description = PyUnicode_InternFromString("_description")) == NULL ||
        (k_resource = PyUnicode_InternFromString("_resource")) == NULL ||
        (k_scope = PyUnicode_InternFromString("_instrumentation_scope")) == NULL)
        return NULL;
    struct { PyObject **slot; const char *name; } names[] = {
        {&k_lock, "_lock"}, {&s_build, "_build"}, {&k_counter, "_counter"}, {&k_pending, "_pending"},
        {&k_encode, "_encode"}, {&k_prepare, "_prepare"}, {&k_admit, "_admit"}, {&k_on_end, "_on_end"},
        {&k_sampled_only, "_sampled_only"}, {&s_spans, "spans"}, {&s_bytes, "bytes"}, {&s_max_spans, "max_spans"},
        {&s_max_bytes, "max_bytes"}, {&k_shutdown, "_shutdown"}, {&k_pid, "_pid"},
        {&k_queue, "_queue"}, {&k_max_queue, "_max_queue_size"}, {&k_max_batch, "_max_export_batch_size"},
        {&k_awaken, "_worker_awaken"}, {&k_flag, "_flag"}, {&s_appendleft, "appendleft"}, {&s_set, "set"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL)
            return NULL;
    if (own_attr_init() < 0)
        return NULL;
    this_pid = getpid();
    if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0)
        this_pid = 0;  /* no pid then matches: the SDK's emit for every span */
    return PyModule_Create(&module_def);
}
