// foliofs_punch.node: fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
// for the data area (Node has no fallocate).
//   punchHole(fd, offset, length) -> 0 or a negative errno, synchronous
//     (offline tools: fsck --compact);
//   punchHoles(fd, offsets, lengths, cb): the ranges (two Float64Arrays of
//     bytes) punched one after the other on libuv's thread pool, then
//     cb(errno) on the main thread: 0, or the first negative errno
//     (EOPNOTSUPP where the host filesystem cannot punch). The arrays are
//     copied before the call returns. A punch takes ~0.1-1 ms on ext4
//     (a journal transaction each): never on the event loop of a mount.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <linux/falloc.h>
#include <node_api.h>

#define MODE (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)

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
	int rc = fallocate(fd, MODE, off, len) == 0 ? 0 : -errno;
	napi_create_int32(env, rc, &result);
	return result;
}

struct batch {
	napi_async_work work;
	napi_ref cb;
	int fd;
	size_t n;
	double *offs, *lens;
	int rc;
};

static void batch_execute(napi_env env, void *data) {
	(void)env;
	struct batch *b = data;
	for (size_t i = 0; i < b->n; i++) {
		if (fallocate(b->fd, MODE, (off_t)b->offs[i], (off_t)b->lens[i]) != 0) {
			b->rc = -errno;
			if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EBADF) return;
		}
	}
}

static void batch_complete(napi_env env, napi_status status, void *data) {
	struct batch *b = data;
	napi_value cb, global, arg;
	if (napi_get_reference_value(env, b->cb, &cb) == napi_ok && napi_get_global(env, &global) == napi_ok) {
		napi_create_int32(env, status == napi_ok ? b->rc : -ECANCELED, &arg);
		napi_call_function(env, global, cb, 1, &arg, NULL);
	}
	napi_delete_reference(env, b->cb);
	napi_delete_async_work(env, b->work);
	free(b->offs);
	free(b->lens);
	free(b);
}

static int copy_f64(napi_env env, napi_value v, double **out, size_t *n) {
	napi_typedarray_type type;
	size_t len;
	void *data;
	if (napi_get_typedarray_info(env, v, &type, &len, &data, NULL, NULL) != napi_ok || type != napi_float64_array) return -1;
	*out = malloc(len ? len * sizeof(double) : 1);
	if (!*out) return -1;
	memcpy(*out, data, len * sizeof(double));
	*n = len;
	return 0;
}

static napi_value punch_holes(napi_env env, napi_callback_info info) {
	size_t argc = 4, n1 = 0, n2 = 0;
	napi_value argv[4], name;
	napi_valuetype t;
	struct batch *b = calloc(1, sizeof(*b));
	if (!b) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 4 ||
	    napi_get_value_int32(env, argv[0], &b->fd) != napi_ok ||
	    copy_f64(env, argv[1], &b->offs, &n1) || copy_f64(env, argv[2], &b->lens, &n2) || n1 != n2 ||
	    napi_typeof(env, argv[3], &t) != napi_ok || t != napi_function) {
		free(b->offs); free(b->lens); free(b);
		napi_throw_type_error(env, NULL, "punchHoles(fd, offsets: Float64Array, lengths: Float64Array, cb)");
		return NULL;
	}
	b->n = n1;
	napi_create_reference(env, argv[3], 1, &b->cb);
	napi_create_string_utf8(env, "foliofs_punch", NAPI_AUTO_LENGTH, &name);
	napi_create_async_work(env, NULL, name, batch_execute, batch_complete, b, &b->work);
	napi_queue_async_work(env, b->work);
	return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
	napi_value fn;
	napi_create_function(env, "punchHole", NAPI_AUTO_LENGTH, punch_hole, NULL, &fn);
	napi_set_named_property(env, exports, "punchHole", fn);
	napi_create_function(env, "punchHoles", NAPI_AUTO_LENGTH, punch_holes, NULL, &fn);
	napi_set_named_property(env, exports, "punchHoles", fn);
	return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
