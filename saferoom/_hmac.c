/*
 * HMAC-SHA256 over a column of strings, for tokens and fingerprints.
 *
 * DuckDB's sha256 is portable C; one HMAC costs it four SHA-256 blocks,
 * about 0.9 us a value. Here the two key blocks (key ^ ipad, key ^ opad)
 * are compressed once per column, leaving two blocks a value, and the
 * blocks use the CPU's SHA extensions where it has them. The result is
 * exactly RFC 2104 HMAC-SHA256; only its first 8 or 16 bytes are written.
 *
 * The loop runs without the GIL, so DuckDB's threads hash in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SAFEROOM_X86 1
#include <immintrin.h>
#endif

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t IV[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

typedef void (*compress_fn)(uint32_t state[8], const uint8_t *data, size_t blocks);

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static uint32_t load_be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void store_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void compress_portable(uint32_t state[8], const uint8_t *data, size_t blocks) {
    uint32_t w[64];
    for (; blocks--; data += 64) {
        for (int i = 0; i < 16; i++) w[i] = load_be32(data + 4 * i);
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
        uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
        for (int i = 0; i < 64; i++) {
            uint32_t t1 = h + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
            uint32_t t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        state[0] += a; state[1] += b; state[2] += c; state[3] += d;
        state[4] += e; state[5] += f; state[6] += g; state[7] += h;
    }
}

#ifdef SAFEROOM_X86
__attribute__((target("sha,sse4.1,ssse3")))
static void compress_shani(uint32_t state[8], const uint8_t *data, size_t blocks) {
    const __m128i order = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i tmp = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[0]), 0xB1); /* CDAB */
    __m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[4]), 0x1B);  /* EFGH */
    __m128i s0 = _mm_alignr_epi8(tmp, s1, 8);                                           /* ABEF */
    s1 = _mm_blend_epi16(s1, tmp, 0xF0);                                                 /* CDGH */
    for (; blocks--; data += 64) {
        __m128i abef = s0, cdgh = s1, w[16];
        for (int i = 0; i < 16; i++) {
            if (i < 4) {
                w[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * i)), order);
            } else {
                __m128i x = _mm_sha256msg1_epu32(w[i - 4], w[i - 3]);
                x = _mm_add_epi32(x, _mm_alignr_epi8(w[i - 1], w[i - 2], 4));
                w[i] = _mm_sha256msg2_epu32(x, w[i - 1]);
            }
            __m128i msg = _mm_add_epi32(w[i], _mm_loadu_si128((const __m128i *)&K[4 * i]));
            s1 = _mm_sha256rnds2_epu32(s1, s0, msg);
            s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(msg, 0x0E));
        }
        s0 = _mm_add_epi32(s0, abef);
        s1 = _mm_add_epi32(s1, cdgh);
    }
    tmp = _mm_shuffle_epi32(s0, 0x1B);      /* FEBA */
    s1 = _mm_shuffle_epi32(s1, 0xB1);       /* DCHG */
    s0 = _mm_blend_epi16(tmp, s1, 0xF0);    /* DCBA */
    s1 = _mm_alignr_epi8(s1, tmp, 8);       /* HGFE */
    _mm_storeu_si128((__m128i *)&state[0], s0);
    _mm_storeu_si128((__m128i *)&state[4], s1);
}

/* Two messages, one block each, interleaved: a block is a chain of dependent SHA
 * instructions, so a second independent chain fills the gaps in the pipeline. */
__attribute__((target("sha,sse4.1,ssse3")))
static void compress2_shani(uint32_t state[2][8], const uint8_t block[2][64]) {
    const __m128i order = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i s0[2], s1[2], abef[2], cdgh[2], w[2][16];
    for (int k = 0; k < 2; k++) {
        __m128i tmp = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[k][0]), 0xB1);
        s1[k] = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[k][4]), 0x1B);
        s0[k] = _mm_alignr_epi8(tmp, s1[k], 8);
        s1[k] = _mm_blend_epi16(s1[k], tmp, 0xF0);
        abef[k] = s0[k];
        cdgh[k] = s1[k];
    }
    for (int i = 0; i < 16; i++) {
        __m128i constants = _mm_loadu_si128((const __m128i *)&K[4 * i]);
        for (int k = 0; k < 2; k++) {
            if (i < 4) {
                w[k][i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(block[k] + 16 * i)), order);
            } else {
                __m128i x = _mm_sha256msg1_epu32(w[k][i - 4], w[k][i - 3]);
                x = _mm_add_epi32(x, _mm_alignr_epi8(w[k][i - 1], w[k][i - 2], 4));
                w[k][i] = _mm_sha256msg2_epu32(x, w[k][i - 1]);
            }
            __m128i msg = _mm_add_epi32(w[k][i], constants);
            s1[k] = _mm_sha256rnds2_epu32(s1[k], s0[k], msg);
            s0[k] = _mm_sha256rnds2_epu32(s0[k], s1[k], _mm_shuffle_epi32(msg, 0x0E));
        }
    }
    for (int k = 0; k < 2; k++) {
        s0[k] = _mm_add_epi32(s0[k], abef[k]);
        s1[k] = _mm_add_epi32(s1[k], cdgh[k]);
        __m128i tmp = _mm_shuffle_epi32(s0[k], 0x1B);
        __m128i dchg = _mm_shuffle_epi32(s1[k], 0xB1);
        _mm_storeu_si128((__m128i *)&state[k][0], _mm_blend_epi16(tmp, dchg, 0xF0));
        _mm_storeu_si128((__m128i *)&state[k][4], _mm_alignr_epi8(dchg, tmp, 8));
    }
}
#endif

typedef void (*compress2_fn)(uint32_t state[2][8], const uint8_t block[2][64]);

static void compress2_portable(uint32_t state[2][8], const uint8_t block[2][64]) {
    compress_portable(state[0], block[0], 1);
    compress_portable(state[1], block[1], 1);
}

static compress2_fn compress2 = compress2_portable;

static compress_fn pick_compress(void) {
#ifdef SAFEROOM_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("ssse3"))
        return compress_shani;
#endif
    return compress_portable;
}

static compress_fn compress = compress_portable;

static void use(compress_fn chosen) {
    compress = chosen;
#ifdef SAFEROOM_X86
    compress2 = chosen == compress_shani ? compress2_shani : compress2_portable;
#endif
}

/* Key material is not left behind on the stack (a volatile write is not optimised away). */
static void wipe(void *memory, size_t size) {
    volatile uint8_t *bytes = memory;
    while (size--) *bytes++ = 0;
}

/* The state after the one 64-byte key block, shared by every value. */
static void key_state(uint32_t out[8], const uint8_t block[64], uint8_t pad) {
    uint8_t padded[64];
    for (int i = 0; i < 64; i++) padded[i] = block[i] ^ pad;
    memcpy(out, IV, sizeof(IV));
    compress(out, padded, 1);
    wipe(padded, sizeof(padded));
}

/* Continue from ``state`` (64 bytes already hashed) over message, padding included. */
static void finish(uint32_t state[8], const uint8_t *msg, size_t len) {
    size_t full = len / 64, rest = len % 64;
    if (full) compress(state, msg, full);
    uint8_t tail[128] = {0};
    memcpy(tail, msg + 64 * full, rest);
    tail[rest] = 0x80;
    size_t blocks = rest < 56 ? 1 : 2;
    uint64_t bits = (uint64_t)(64 + len) * 8;
    for (int i = 0; i < 8; i++) tail[64 * blocks - 1 - i] = (uint8_t)(bits >> (8 * i));
    compress(state, tail, blocks);
}

static void hmac_one(const uint32_t inner[8], const uint32_t outer[8], const uint8_t *msg, size_t len, uint32_t out[8]) {
    uint32_t st[8];
    uint8_t digest[32];
    memcpy(st, inner, 32);
    finish(st, msg, len);
    for (int i = 0; i < 8; i++) store_be32(digest + 4 * i, st[i]);
    memcpy(out, outer, 32);
    finish(out, digest, 32);
}

#define SHORT 55 /* bytes of message that fit the final block beside padding and length */

/* The one final block of a message of at most SHORT bytes that follows the 64-byte key block. */
static void short_block(uint8_t block[64], const uint8_t *msg, size_t len) {
    memset(block, 0, 64);
    memcpy(block, msg, len);
    block[len] = 0x80;
    uint64_t bits = (uint64_t)(64 + len) * 8;
    for (int i = 0; i < 8; i++) block[63 - i] = (uint8_t)(bits >> (8 * i));
}

/* Two short messages at once: both inner hashes, then both outer hashes. */
static void hmac_two(const uint32_t inner[8], const uint32_t outer[8], const uint8_t *msg[2], const size_t len[2],
                     uint32_t out[2][8]) {
    uint8_t block[2][64];
    uint32_t st[2][8];
    for (int k = 0; k < 2; k++) {
        short_block(block[k], msg[k], len[k]);
        memcpy(st[k], inner, 32);
    }
    compress2(st, (const uint8_t (*)[64])block);
    for (int k = 0; k < 2; k++) {
        uint8_t digest[32];
        for (int i = 0; i < 8; i++) store_be32(digest + 4 * i, st[k][i]);
        short_block(block[k], digest, 32);
        memcpy(out[k], outer, 32);
    }
    compress2(out, (const uint8_t (*)[64])block);
}

static int64_t offset_at(const uint8_t *offsets, Py_ssize_t size, Py_ssize_t i) {
    if (size == 8) {
        int64_t v;
        memcpy(&v, offsets + 8 * i, 8);
        return v;
    }
    int32_t v;
    memcpy(&v, offsets + 4 * i, 4);
    return v;
}

static void emit(uint8_t *dst, Py_ssize_t i, Py_ssize_t width, const uint32_t h[8]) {
    if (width == 8) {
        uint64_t v = ((uint64_t)h[0] << 32) | h[1];
        memcpy(dst + 8 * i, &v, 8);
    } else {
        for (int j = 0; j < 4; j++) store_be32(dst + 16 * i + 4 * j, h[j]);
    }
}

PyDoc_STRVAR(column_doc,
"column(key_block, offsets, offset_size, data, count, out, width)\n\n"
"HMAC-SHA256 of ``count`` strings given as Arrow buffers: ``offsets`` holds\n"
"count + 1 native int32 or int64 (``offset_size`` 4 or 8) offsets into\n"
"``data``. Writes the first ``width`` bytes (8 or 16) of each digest into\n"
"``out``; width 8 writes a native-endian uint64 of the digest's first 8\n"
"bytes read big-endian. ``key_block`` is the 64-byte padded key.");

static PyObject *column(PyObject *self, PyObject *args) {
    Py_buffer key, offsets, data, out;
    Py_ssize_t offset_size, count, width;
    if (!PyArg_ParseTuple(args, "y*y*ny*nw*n", &key, &offsets, &offset_size, &data, &count, &out, &width)) return NULL;
    PyObject *result = NULL;
    if (key.len != 64 || count < 0 || (offset_size != 4 && offset_size != 8) || (width != 8 && width != 16) ||
        out.len < count * width || offsets.len < (count + 1) * offset_size) {
        PyErr_SetString(PyExc_ValueError, "column(): buffers do not match count and width");
        goto done;
    }
    const uint8_t *offs = offsets.buf;
    for (Py_ssize_t i = 0; i <= count; i++) { /* every offset checked before any is used */
        int64_t at = offset_at(offs, offset_size, i);
        if (at < 0 || at > data.len || (i > 0 && at < offset_at(offs, offset_size, i - 1))) {
            PyErr_SetString(PyExc_ValueError, "column(): an offset points outside the data buffer");
            goto done;
        }
    }
    uint32_t inner[8], outer[8];
    key_state(inner, key.buf, 0x36);
    key_state(outer, key.buf, 0x5c);
    Py_BEGIN_ALLOW_THREADS
    const uint8_t *bytes = data.buf;
    uint8_t *dst = out.buf;
    Py_ssize_t i = 0;
    while (i < count) {
        int64_t a = offset_at(offs, offset_size, i), b = offset_at(offs, offset_size, i + 1);
        if (i + 1 < count) {
            int64_t c = offset_at(offs, offset_size, i + 2);
            if (b - a <= SHORT && c - b <= SHORT) {
                const uint8_t *msg[2] = {bytes + a, bytes + b};
                const size_t len[2] = {(size_t)(b - a), (size_t)(c - b)};
                uint32_t h[2][8];
                hmac_two(inner, outer, msg, len, h);
                emit(dst, i, width, h[0]);
                emit(dst, i + 1, width, h[1]);
                i += 2;
                continue;
            }
        }
        uint32_t h[8];
        hmac_one(inner, outer, bytes + a, (size_t)(b - a), h);
        emit(dst, i, width, h);
        i += 1;
    }
    Py_END_ALLOW_THREADS
    wipe(inner, sizeof(inner));
    wipe(outer, sizeof(outer));
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *accelerated(PyObject *self, PyObject *unused) {
    return PyBool_FromLong(compress != compress_portable);
}

/* Tests run both paths on one machine: off forces the portable code, on restores the best. */
static PyObject *set_accelerated(PyObject *self, PyObject *flag) {
    use(PyObject_IsTrue(flag) ? pick_compress() : compress_portable);
    return PyBool_FromLong(compress != compress_portable);
}

static PyMethodDef methods[] = {
    {"column", column, METH_VARARGS, column_doc},
    {"accelerated", accelerated, METH_NOARGS, "True when SHA-256 runs on the CPU's SHA instructions."},
    {"set_accelerated", set_accelerated, METH_O, "Use the CPU's SHA instructions (if it has them) or not."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "saferoom._hmac", "HMAC-SHA256 over Arrow string buffers.", -1, methods};

PyMODINIT_FUNC PyInit__hmac(void) {
    use(pick_compress());
    return PyModule_Create(&module);
}
