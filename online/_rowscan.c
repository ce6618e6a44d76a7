/* Stored rows scanned into answer columns without a Python object per value (online/encoding.py, rows_decoder).

A stored row is the orjson array ``[event_us, created_us|null, v1, v2, ...]`` (online/encoding.py). ``scan`` reads
many of them and returns, for each requested element, the JSON array text of that element across the rows
(``[1.5,null,"a"]``, ``null`` where a row is None), which the HTTP answer splices as it is, plus each row's event
time as a Python int.

It accepts only what orjson writes: no whitespace, scalars only, integers in the int64 range without ``-0``,
floats in orjson's shapes (the shortest digits, a lowercase exponent with or without ``+`` for a positive one as
the running orjson writes it: ``exponent_plus``; within the range a double holds), strings in
orjson's escaping (the short escapes, ``\u00XX`` in lowercase for the other control characters, everything else raw,
valid UTF-8). For such text ``orjson.dumps(orjson.loads(text)) == text``, so the copied text is the answer's.
Anything else (a malformed row, another writer's text, rows of different widths) returns None and the caller
decodes the rows in Python, which raises today's error for a malformed row.

A column is "spliceable" when every token in it is one the Python path would write back unchanged for the
column's type (kinds: 'i' int64, 'f' float64, 's' string, 'b' bool, 't' timestamp: never, it becomes an ISO text).
The caller decodes the other columns' texts in Python: the same tokens give the same values.
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

enum {
    T_NULL = 1,
    T_TRUE = 2,
    T_FALSE = 4,
    T_INT = 8,        /* canonical integer in the int64 range */
    T_FLOAT = 16,     /* a number with a fraction or an exponent, in orjson's shape, in a double's range */
    T_STR = 32,       /* a string in orjson's escaping */
    T_NONFINITE = 64, /* the strings "NaN", "Infinity", "-Infinity": a float column's non-finite values */
};

/* The token classes each kind writes back unchanged. */
static int
allowed_classes(char kind)
{
    switch (kind) {
    case 'i':
        return T_NULL | T_INT;
    case 'f':
        return T_NULL | T_FLOAT | T_NONFINITE;
    case 's':
        return T_NULL | T_STR | T_NONFINITE;
    case 'b':
        return T_NULL | T_TRUE | T_FALSE;
    default:
        return 0;
    }
}

typedef struct {
    Py_ssize_t start;
    Py_ssize_t length;
    int cls;
} Token;

static int
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* A number starting at s[i]: its class, or 0 when it is not one orjson writes. Sets *end past it. */
static int
scan_number(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, Py_ssize_t *end, int exponent_plus)
{
    int negative = 0;
    if (s[i] == '-') {
        negative = 1;
        i++;
    }
    Py_ssize_t int_start = i;
    if (i >= n || !is_digit(s[i]))
        return 0;
    if (s[i] == '0') {
        i++;
    }
    else {
        while (i < n && is_digit(s[i]))
            i++;
    }
    Py_ssize_t int_digits = i - int_start;
    int fraction = 0, exponent = 0;
    Py_ssize_t fraction_digits = 0;
    if (i < n && s[i] == '.') {
        i++;
        Py_ssize_t f = i;
        while (i < n && is_digit(s[i]))
            i++;
        fraction_digits = i - f;
        if (fraction_digits == 0)
            return 0;
        fraction = 1;
    }
    long exp_value = 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        if (s[i] == 'E')
            return 0; /* orjson writes a lowercase e */
        i++;
        int exp_negative = 0;
        if (i < n && s[i] == '-') {
            exp_negative = 1;
            i++;
        }
        else if (i < n && s[i] == '+') {
            if (!exponent_plus)
                return 0;
            i++;
        }
        else if (exponent_plus) {
            return 0; /* this orjson writes a positive exponent with its sign */
        }
        Py_ssize_t e = i;
        if (i < n && s[i] == '0')
            return 0; /* orjson writes no leading zero in an exponent */
        while (i < n && is_digit(s[i])) {
            if (i - e < 6)
                exp_value = exp_value * 10 + (s[i] - '0');
            i++;
        }
        if (i == e || i - e > 3)
            return 0; /* no digits, or an exponent no double has */
        if (exp_negative)
            exp_value = -exp_value;
        exponent = 1;
    }
    *end = i;
    if (!fraction && !exponent) {
        /* An integer: canonical ("-0" is not: it reads back as 0) and within int64. */
        if (negative && int_digits == 1 && s[int_start] == '0')
            return 0;
        if (int_digits < 19)
            return T_INT;
        if (int_digits > 19)
            return 0;
        const char *limit = negative ? "9223372036854775808" : "9223372036854775807";
        return memcmp(s + int_start, limit, 19) <= 0 ? T_INT : 0;
    }
    /* orjson writes the shortest digits that read back as the same double: at most 17 significant ones, no
       trailing zero in a fraction but the ".0" of a whole number written without an exponent. */
    const unsigned char *digits = s + int_start + int_digits + 1; /* the fraction's */
    Py_ssize_t significant = int_digits + fraction_digits;
    if (fraction && digits[fraction_digits - 1] == '0') {
        if (exponent || fraction_digits > 1)
            return 0;
        significant--; /* the ".0" of a whole number */
    }
    if (s[int_start] == '0') { /* 0.000123: the zeros are no significant digits */
        significant--;
        for (Py_ssize_t k = 0; k < fraction_digits && digits[k] == '0'; k++)
            significant--;
    }
    if (significant > 17)
        return 0;
    if (exponent) {
        /* orjson's exponent form has one digit before the point; within [-323, 307] the value is a normal or
           subnormal double away from the overflow and the underflow to zero. */
        if (int_digits != 1 || s[int_start] == '0' || exp_value > 307 || exp_value < -323)
            return 0;
    }
    return T_FLOAT;
}

/* The length of a valid UTF-8 sequence starting at s[i] (a lead byte >= 0x80), or 0. */
static Py_ssize_t
utf8_sequence(const unsigned char *s, Py_ssize_t n, Py_ssize_t i)
{
    unsigned char c = s[i];
    Py_ssize_t length;
    unsigned int lo = 0x80, hi = 0xBF; /* the range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        length = 2;
    }
    else if (c >= 0xE0 && c <= 0xEF) {
        length = 3;
        if (c == 0xE0)
            lo = 0xA0; /* no overlong form */
        else if (c == 0xED)
            hi = 0x9F; /* no surrogate */
    }
    else if (c >= 0xF0 && c <= 0xF4) {
        length = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F; /* nothing beyond U+10FFFF */
    }
    else {
        return 0;
    }
    if (i + length > n)
        return 0;
    if (s[i + 1] < lo || s[i + 1] > hi)
        return 0;
    for (Py_ssize_t k = 2; k < length; k++) {
        if (s[i + k] < 0x80 || s[i + k] > 0xBF)
            return 0;
    }
    return length;
}

static int
hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* orjson writes lowercase hex digits */
}

/* A string starting at s[i] (the opening quote): its class, or 0 when orjson would not write it so. */
static int
scan_string(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, Py_ssize_t *end)
{
    Py_ssize_t start = ++i;
    while (i < n) {
        unsigned char c = s[i];
        if (c == '"') {
            *end = i + 1;
            Py_ssize_t length = i - start;
            const char *text = (const char *)s + start;
            if ((length == 3 && memcmp(text, "NaN", 3) == 0) || (length == 8 && memcmp(text, "Infinity", 8) == 0) ||
                (length == 9 && memcmp(text, "-Infinity", 9) == 0))
                return T_NONFINITE;
            return T_STR;
        }
        if (c == '\\') {
            if (i + 1 >= n)
                return 0;
            unsigned char e = s[i + 1];
            if (e == '"' || e == '\\' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
                i += 2;
                continue;
            }
            if (e != 'u' || i + 5 >= n || s[i + 2] != '0' || s[i + 3] != '0')
                return 0;
            int high = hex_value(s[i + 4]), low = hex_value(s[i + 5]);
            if (high < 0 || high > 1 || low < 0)
                return 0;
            int code = high * 16 + low;
            if (code == 0x08 || code == 0x09 || code == 0x0A || code == 0x0C || code == 0x0D)
                return 0; /* orjson writes these as \b \t \n \f \r */
            i += 6;
            continue;
        }
        if (c < 0x20)
            return 0; /* a raw control character: not JSON */
        if (c >= 0x80) {
            Py_ssize_t length = utf8_sequence(s, n, i);
            if (length == 0)
                return 0;
            i += length;
            continue;
        }
        i++;
    }
    return 0;
}

/* The tokens of one row into tokens[0..width); returns the row's width, or -1 when the row is not one orjson
   writes or is wider than capacity. */
static Py_ssize_t
scan_row(const unsigned char *s, Py_ssize_t n, Token *tokens, Py_ssize_t capacity, int exponent_plus)
{
    if (n < 2 || s[0] != '[' || s[n - 1] != ']')
        return -1;
    Py_ssize_t i = 1, width = 0, last = n - 1;
    if (i == last)
        return 0;
    for (;;) {
        if (width >= capacity)
            return -1;
        Py_ssize_t end = i;
        int cls = 0;
        unsigned char c = s[i];
        if (c == '"') {
            cls = scan_string(s, last, i, &end);
        }
        else if (c == '-' || is_digit(c)) {
            cls = scan_number(s, last, i, &end, exponent_plus);
        }
        else if (c == 'n' && last - i >= 4 && memcmp(s + i, "null", 4) == 0) {
            cls = T_NULL;
            end = i + 4;
        }
        else if (c == 't' && last - i >= 4 && memcmp(s + i, "true", 4) == 0) {
            cls = T_TRUE;
            end = i + 4;
        }
        else if (c == 'f' && last - i >= 5 && memcmp(s + i, "false", 5) == 0) {
            cls = T_FALSE;
            end = i + 5;
        }
        if (cls == 0)
            return -1;
        tokens[width].start = i;
        tokens[width].length = end - i;
        tokens[width].cls = cls;
        width++;
        if (end == last)
            return width;
        if (s[end] != ',' || end + 1 == last)
            return -1;
        i = end + 1;
    }
}

static long long
parse_int(const unsigned char *s, Py_ssize_t length)
{
    /* A canonical int64 token (T_INT): accumulated negatively so that INT64_MIN fits. */
    int negative = s[0] == '-';
    long long value = 0;
    for (Py_ssize_t k = negative; k < length; k++)
        value = value * 10 - (s[k] - '0');
    return negative ? value : -value;
}

#define MAX_WIDTH 512 /* elements per row (on the stack); a view with more features takes the Python path */

static PyObject *
scan(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *rows_arg, *offsets_arg;
    const char *kinds;
    Py_ssize_t kinds_length;
    int exponent_plus;
    if (!PyArg_ParseTuple(args, "OOy#p:scan", &rows_arg, &offsets_arg, &kinds, &kinds_length, &exponent_plus))
        return NULL;
    PyObject *rows = PySequence_Fast(rows_arg, "rows must be a sequence");
    if (rows == NULL)
        return NULL;
    PyObject *offsets_seq = PySequence_Fast(offsets_arg, "offsets must be a sequence");
    if (offsets_seq == NULL) {
        Py_DECREF(rows);
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(rows);
    Py_ssize_t columns = PySequence_Fast_GET_SIZE(offsets_seq);
    PyObject *result = NULL, *events = NULL, *texts = NULL;
    Token *tokens = NULL, row_tokens[MAX_WIDTH];
    Py_ssize_t *offsets = NULL, width = -1, stride = columns + 1; /* per row: the event time, then each column */
    unsigned long long spliceable = 0;
    if (kinds_length != columns) {
        PyErr_SetString(PyExc_ValueError, "kinds must give one kind per offset");
        goto done;
    }
    offsets = PyMem_Malloc(sizeof(Py_ssize_t) * (columns ? columns : 1));
    if (offsets == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < columns; j++) {
        offsets[j] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(offsets_seq, j));
        if (offsets[j] == -1 && PyErr_Occurred())
            goto done;
        if (offsets[j] < 2) {
            PyErr_SetString(PyExc_ValueError, "an offset names a value after the event and created times (>= 2)");
            goto done;
        }
    }
    /* Per row, the event time's token then each requested column's token; class 0: no row. */
    tokens = PyMem_Malloc(sizeof(Token) * (count * stride + 1));
    if (tokens == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t r = 0; r < count; r++) {
        PyObject *row = PySequence_Fast_GET_ITEM(rows, r);
        Token *kept = tokens + r * stride;
        if (row == Py_None) {
            for (Py_ssize_t j = 0; j < stride; j++)
                kept[j].cls = 0;
            continue;
        }
        if (!PyBytes_Check(row))
            goto fallback;
        Py_ssize_t found = scan_row((const unsigned char *)PyBytes_AS_STRING(row), PyBytes_GET_SIZE(row), row_tokens,
                                    MAX_WIDTH, exponent_plus);
        if (found < 0 || (width >= 0 && found != width))
            goto fallback; /* not orjson's text, or rows of different widths: the Python path says which */
        width = found;
        if (width < 1 || row_tokens[0].cls != T_INT)
            goto fallback;
        kept[0] = row_tokens[0];
        for (Py_ssize_t j = 0; j < columns; j++) {
            if (offsets[j] >= width)
                goto fallback;
            kept[j + 1] = row_tokens[offsets[j]];
        }
    }
    events = PyList_New(count);
    texts = PyList_New(columns);
    if (events == NULL || texts == NULL)
        goto done;
    for (Py_ssize_t r = 0; r < count; r++) {
        Token *t = tokens + r * stride;
        PyObject *event;
        if (t->cls == 0) {
            event = Py_NewRef(Py_None);
        }
        else {
            PyObject *row = PySequence_Fast_GET_ITEM(rows, r);
            event = PyLong_FromLongLong(parse_int((const unsigned char *)PyBytes_AS_STRING(row) + t->start, t->length));
            if (event == NULL)
                goto done;
        }
        PyList_SET_ITEM(events, r, event);
    }
    for (Py_ssize_t j = 0; j < columns; j++) {
        int allowed = allowed_classes(kinds[j]), classes = 0;
        Py_ssize_t size = 2 + (count > 0 ? count - 1 : 0); /* brackets and commas */
        for (Py_ssize_t r = 0; r < count; r++) {
            Token *t = tokens + r * stride + j + 1;
            size += t->cls ? t->length : 4;
            classes |= t->cls ? t->cls : T_NULL;
        }
        if (j < 64 && allowed && (classes & ~allowed) == 0)
            spliceable |= 1ULL << j;
        PyObject *text = PyBytes_FromStringAndSize(NULL, size);
        if (text == NULL)
            goto done;
        char *out = PyBytes_AS_STRING(text);
        *out++ = '[';
        for (Py_ssize_t r = 0; r < count; r++) {
            Token *t = tokens + r * stride + j + 1;
            if (r)
                *out++ = ',';
            if (t->cls) {
                memcpy(out, PyBytes_AS_STRING(PySequence_Fast_GET_ITEM(rows, r)) + t->start, t->length);
                out += t->length;
            }
            else {
                memcpy(out, "null", 4);
                out += 4;
            }
        }
        *out = ']';
        PyList_SET_ITEM(texts, j, text);
    }
    PyObject *mask = PyLong_FromUnsignedLongLong(spliceable);
    if (mask == NULL)
        goto done;
    result = PyTuple_Pack(3, events, texts, mask);
    Py_DECREF(mask);
    goto done;
fallback:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(events);
    Py_XDECREF(texts);
    PyMem_Free(tokens);
    PyMem_Free(offsets);
    Py_DECREF(offsets_seq);
    Py_DECREF(rows);
    return result;
}

/* blank(text, indices): a column text from scan with the values at the (increasing) indices replaced by null. */
static PyObject *
blank(PyObject *module, PyObject *args)
{
    (void)module;
    const char *text;
    Py_ssize_t length;
    PyObject *indices_arg;
    if (!PyArg_ParseTuple(args, "y#O:blank", &text, &length, &indices_arg))
        return NULL;
    PyObject *indices = PySequence_Fast(indices_arg, "indices must be a sequence");
    if (indices == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(indices);
    /* At most as long as the text plus 4 bytes per blanked value (a one-byte value becoming null). */
    PyObject *out = PyBytes_FromStringAndSize(NULL, length + 4 * count);
    if (out == NULL) {
        Py_DECREF(indices);
        return NULL;
    }
    char *o = PyBytes_AS_STRING(out);
    Py_ssize_t i = 1, value = 0, next = 0, wanted = -1;
    if (length < 2 || text[0] != '[' || text[length - 1] != ']')
        goto malformed;
    *o++ = '[';
    while (i < length - 1) {
        if (wanted < value && next < count) {
            wanted = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(indices, next++));
            if (wanted == -1 && PyErr_Occurred())
                goto error;
            if (wanted < value) {
                PyErr_SetString(PyExc_ValueError, "indices must increase");
                goto error;
            }
        }
        Py_ssize_t start = i;
        if (text[i] == '"') { /* a string: to its closing quote, past escaped characters */
            for (i++; i < length - 1 && text[i] != '"'; i++) {
                if (text[i] == '\\')
                    i++;
            }
            i++;
        }
        else {
            while (i < length - 1 && text[i] != ',')
                i++;
        }
        if (value == wanted) {
            memcpy(o, "null", 4);
            o += 4;
        }
        else {
            memcpy(o, text + start, i - start);
            o += i - start;
        }
        value++;
        if (i < length - 1) {
            if (text[i] != ',')
                goto malformed;
            *o++ = ',';
            i++;
        }
    }
    if (wanted >= value || next < count) {
        PyErr_SetString(PyExc_IndexError, "an index is beyond the column's values");
        goto error;
    }
    *o++ = ']';
    Py_DECREF(indices);
    if (_PyBytes_Resize(&out, o - PyBytes_AS_STRING(out)) < 0)
        return NULL;
    return out;
malformed:
    PyErr_SetString(PyExc_ValueError, "not a column text of scan()");
error:
    Py_DECREF(indices);
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(rows, offsets, kinds, exponent_plus) -> (event_micros, column_texts, spliceable_mask) | None\n\n"
     "The event time of each stored row (None where the row is None) and, per offset, the JSON array text of that "
     "element across the rows (null where the row is None); bit j of the mask is set when column j's text is what "
     "the answer writes for kind kinds[j]. None when a row is not orjson's text: decode the rows in Python then."},
    {"blank", blank, METH_VARARGS,
     "blank(text, indices) -> bytes\n\nA column text of scan() with the values at the increasing indices replaced by "
     "null (an expired row's values are not served)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_rowscan",
    .m_doc = "Stored rows scanned into answer columns (online/encoding.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__rowscan(void)
{
    return PyModule_Create(&module);
}
