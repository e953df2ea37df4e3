// foliofs_crc.node: zlib's crc32 of data blocks and B-tree pages, by
// carry-less multiplication where the CPU has it (foliofs_crc32.h).
//
//   accelerated: boolean   the CPU has PCLMULQDQ and SSE4.1; when false the
//                          functions below still work (a byte table, slower
//                          than zlib: callers then keep zlib, src/crc.ts)
//   crc32(buf) -> number   crc32 of a Uint8Array (or Buffer), like zlib's
//   crcBlocks(buf, size, out): crc32 of each `size`-byte piece of buf into
//                          the Uint32Array out (buf.length = out.length * size)
#include <node_api.h>
#include "foliofs_crc32.h"

static int bytes_of(napi_env env, napi_value v, const uint8_t **data, size_t *len) {
	napi_typedarray_type type;
	void *d;
	if (napi_get_typedarray_info(env, v, &type, len, &d, NULL, NULL) != napi_ok || type != napi_uint8_array) return -1;
	*data = d;
	return 0;
}

static napi_value js_crc32(napi_env env, napi_callback_info info) {
	size_t argc = 1;
	napi_value argv[1], result;
	const uint8_t *data;
	size_t len;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 || bytes_of(env, argv[0], &data, &len)) {
		napi_throw_type_error(env, NULL, "crc32(buf): a Uint8Array");
		return NULL;
	}
	napi_create_uint32(env, crc32_buf(data, len), &result);
	return result;
}

static napi_value js_crc_blocks(napi_env env, napi_callback_info info) {
	size_t argc = 3, len, n;
	napi_value argv[3];
	const uint8_t *data;
	uint32_t size;
	napi_typedarray_type type;
	void *out;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3 || bytes_of(env, argv[0], &data, &len) ||
	    napi_get_value_uint32(env, argv[1], &size) != napi_ok || size == 0 ||
	    napi_get_typedarray_info(env, argv[2], &type, &n, &out, NULL, NULL) != napi_ok || type != napi_uint32_array ||
	    (size_t)size * n != len) {
		napi_throw_type_error(env, NULL, "crcBlocks(buf, size, out): a Uint8Array of out.length pieces of size bytes, a Uint32Array");
		return NULL;
	}
	uint32_t *o = out;
	for (size_t i = 0; i < n; i++) o[i] = crc32_buf(data + i * size, size);
	return NULL;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
	napi_value fn, flag;
	int fast = crc_accelerated();
	napi_create_function(env, "crc32", NAPI_AUTO_LENGTH, js_crc32, NULL, &fn);
	napi_set_named_property(env, exports, "crc32", fn);
	napi_create_function(env, "crcBlocks", NAPI_AUTO_LENGTH, js_crc_blocks, NULL, &fn);
	napi_set_named_property(env, exports, "crcBlocks", fn);
	napi_get_boolean(env, fast, &flag);
	napi_set_named_property(env, exports, "accelerated", flag);
	return exports;
}
