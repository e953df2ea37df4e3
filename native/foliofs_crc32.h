// foliofs_crc32.h: zlib's crc32 (IEEE 802.3, bit-reflected polynomial
// 0xEDB88320) by carry-less multiplication (PCLMULQDQ) where the CPU has
// it, else a byte table. Static functions, for foliofs_crc.node
// (foliofs-crc.c) and the patched fuse-native binding (read plans check
// the blocks they read; build-binding.js copies this header beside it).
//
//   crc32_buf(p, len)      zlib's crc32(0, p, len)
//   crc_accelerated()      the CPU has PCLMULQDQ and SSE4.1 (else the table:
//                          slower than zlib's own)
//
// Why: zlib's crc32 runs at ~2.4 GB/s here. A cold sequential read checks
// every 4 KiB block it reads, and writeback sums every block it writes:
// a GiB costs ~0.5 s of a core, on a 2-core machine whose other core is
// busy answering FUSE. Folding 64 bytes per step with PCLMULQDQ runs at
// several times that. The results are the same numbers zlib gives (the
// on-disk format does not change); test/unit/crc.test.ts compares them.
//
// How the folding works (the published method for CRCs with PCLMULQDQ):
// the message is a polynomial over GF(2); the CRC is its remainder modulo
// P(x). Four 128-bit accumulators each hold a 16-byte stretch; multiplying
// an accumulator's halves by x^(512+64) mod P and x^512 mod P (constants
// K1, K2) moves it 64 bytes on, where it is XORed into the next data. At
// the end the four are folded into one (K3, K4: 128 bits on), which is
// reduced 128 -> 64 -> 32 bits (K5) and then exactly modulo P by Barrett
// reduction (P and MU = floor(x^64 / P)). Everything is bit-reflected, as
// zlib's crc is. The running crc enters XORed into the first 4 bytes.
//
// Misuse: calling the clmul path with fewer than 64 bytes (crc_update
// routes those to the table); treating `crc` here as zlib's external
// value (these helpers take and return the inverted register, see
// crc32_buf).
#ifndef FOLIOFS_CRC32_H
#define FOLIOFS_CRC32_H
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <cpuid.h>
#define HAVE_X86 1
#endif

static uint32_t table[256];

__attribute__((constructor)) static void make_table(void) {
	for (uint32_t n = 0; n < 256; n++) {
		uint32_t c = n;
		for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		table[n] = c;
	}
}

static uint32_t crc_bytes(uint32_t c, const uint8_t *p, size_t len) {
	while (len--) c = table[(c ^ *p++) & 0xff] ^ (c >> 8);
	return c;
}

#ifdef HAVE_X86
static int have_clmul;

__attribute__((constructor)) static void detect(void) {
	unsigned a, b, c, d;
	if (__get_cpuid(1, &a, &b, &c, &d)) have_clmul = (c & bit_PCLMUL) && (c & bit_SSE4_1);
}

/* one 128-bit accumulator moved on by the distance its constant pair encodes */
#define FOLD(x, k) _mm_xor_si128(_mm_clmulepi64_si128((x), (k), 0x00), _mm_clmulepi64_si128((x), (k), 0x11))

/* the register c over len bytes, len >= 64 and a multiple of 16 */
__attribute__((target("pclmul,sse4.1")))
static uint32_t crc_clmul(uint32_t c, const uint8_t *p, size_t len) {
	const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4);
	const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
	const __m128i k5 = _mm_set_epi64x(0, 0x0163cd6124);
	const __m128i pmu = _mm_set_epi64x(0x01f7011641, 0x01db710641);
	const __m128i low32 = _mm_setr_epi32(~0, 0, ~0, 0);
	__m128i x1 = _mm_loadu_si128((const __m128i *)(p + 0));
	__m128i x2 = _mm_loadu_si128((const __m128i *)(p + 16));
	__m128i x3 = _mm_loadu_si128((const __m128i *)(p + 32));
	__m128i x4 = _mm_loadu_si128((const __m128i *)(p + 48));
	x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)c));
	p += 64;
	len -= 64;
	for (; len >= 64; p += 64, len -= 64) {
		x1 = _mm_xor_si128(FOLD(x1, k1k2), _mm_loadu_si128((const __m128i *)(p + 0)));
		x2 = _mm_xor_si128(FOLD(x2, k1k2), _mm_loadu_si128((const __m128i *)(p + 16)));
		x3 = _mm_xor_si128(FOLD(x3, k1k2), _mm_loadu_si128((const __m128i *)(p + 32)));
		x4 = _mm_xor_si128(FOLD(x4, k1k2), _mm_loadu_si128((const __m128i *)(p + 48)));
	}
	/* four accumulators into one, then the rest 16 bytes at a time */
	x1 = _mm_xor_si128(FOLD(x1, k3k4), x2);
	x1 = _mm_xor_si128(FOLD(x1, k3k4), x3);
	x1 = _mm_xor_si128(FOLD(x1, k3k4), x4);
	for (; len >= 16; p += 16, len -= 16) x1 = _mm_xor_si128(FOLD(x1, k3k4), _mm_loadu_si128((const __m128i *)p));
	/* 128 -> 64 bits */
	x2 = _mm_clmulepi64_si128(x1, k3k4, 0x10);
	x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), x2);
	/* 64 -> 32 bits (plus the 32 bits Barrett needs) */
	x2 = _mm_srli_si128(x1, 4);
	x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), k5, 0x00), x2);
	/* Barrett: the exact remainder modulo P */
	x2 = _mm_and_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), pmu, 0x10), low32);
	x2 = _mm_clmulepi64_si128(x2, pmu, 0x00);
	x1 = _mm_xor_si128(x1, x2);
	return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

/* the register c (inverted crc) over len bytes */
static uint32_t crc_update(uint32_t c, const uint8_t *p, size_t len) {
#ifdef HAVE_X86
	if (have_clmul && len >= 64) {
		size_t body = len & ~(size_t)15;
		c = crc_clmul(c, p, body);
		p += body;
		len -= body;
	}
#endif
	return crc_bytes(c, p, len);
}

/* zlib's crc32(0, p, len) */
static uint32_t crc32_buf(const uint8_t *p, size_t len) {
	return ~crc_update(~0u, p, len);
}

static inline int crc_accelerated(void) {
#ifdef HAVE_X86
	return have_clmul;
#else
	return 0;
#endif
}

#endif
