// foliofs_punch.node: fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
// for the data area (Node has no fallocate). One synchronous call:
// punchHole(fd, offset, length) -> 0, or a negative errno (EOPNOTSUPP where
// the host filesystem cannot punch). Synchronous on purpose: the caller
// (src/discard.ts) must know the range is punched before its blocks can be
// allocated again, or a late punch would destroy new data.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <node_api.h>

static napi_value punch_hole(napi_env env, napi_callback_info info) {
	size_t argc = 3;
	napi_value argv[3], result;
	int32_t fd = -1;
	int64_t off = 0, len = 0;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3 ||
	    napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
	    napi_get_value_int64(env, argv[1], &off) != napi_ok ||
	    napi_get_value_int64(env, argv[2], &len) != napi_ok || off < 0 || len <= 0) {
		napi_throw_type_error(env, NULL, "punchHole(fd, offset, length): integers, length > 0");
		return NULL;
	}
	int rc = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len) == 0 ? 0 : -errno;
	napi_create_int32(env, rc, &result);
	return result;
}

static napi_value init(napi_env env, napi_value exports) {
	napi_value fn;
	napi_create_function(env, "punchHole", NAPI_AUTO_LENGTH, punch_hole, NULL, &fn);
	napi_set_named_property(env, exports, "punchHole", fn);
	return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
