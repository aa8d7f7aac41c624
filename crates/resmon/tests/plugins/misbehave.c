/*
 * A test plugin ("misbehave") that misbehaves on purpose, as its
 * params.mode says: it hangs in one entry point (some while holding a
 * mutex every resource of the host needs), crashes, returns garbage codes,
 * writes past its output buffer, or goes pending; "slow_is_alive" runs an
 * is_alive that only ends when cancelled. Mode "ok" behaves.
 */
#include "resmon.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct resmon_callbacks *cb;
/* Shared by every resource of the host. */
static pthread_mutex_t global = PTHREAD_MUTEX_INITIALIZER;

struct res {
    void *handle;
    char mode[64];
    volatile int online;
};

static int is(const struct res *r, const char *mode) { return strcmp(r->mode, mode) == 0; }

static void hang(void) {
    for (;;) pause();
}

static void *mb_open(const char *name, const char *params, void *handle) {
    (void)name;
    struct res *r = calloc(1, sizeof *r);
    const char *p = strstr(params, "\"mode\":\"");
    if (!r || !p) {
        cb->log(handle, RESMON_LOG_ERROR, "params.mode is missing");
        free(r);
        return NULL;
    }
    sscanf(p + 8, "%63[^\"]", r->mode);
    r->handle = handle;
    if (is(r, "hang_open")) hang();
    if (is(r, "fail_open")) {
        cb->log(handle, RESMON_LOG_ERROR, "refusing to open, as asked");
        free(r);
        return NULL;
    }
    return r;
}

static void mb_close(void *p) { free(p); }

static void *finish_later(void *p) {
    struct res *r = p;
    for (uint32_t cp = 1; cp <= 3; cp++) {
        if (cb->set_status(r->handle, RESMON_STATE_ONLINE_PENDING, cp)) return NULL;
        usleep(20000);
    }
    r->online = 1;
    cb->set_status(r->handle, RESMON_STATE_ONLINE, 4);
    return NULL;
}

static int32_t mb_online(void *p) {
    struct res *r = p;
    if (is(r, "hang_online")) hang();
    if (is(r, "lock_hang_online")) {
        pthread_mutex_lock(&global);
        hang();
    }
    if (is(r, "garbage")) return 12345;
    if (is(r, "pending_stall")) return RESMON_PENDING;
    if (is(r, "pending")) {
        pthread_t t;
        pthread_create(&t, NULL, finish_later, r);
        pthread_detach(t);
        return RESMON_PENDING;
    }
    r->online = 1;
    return RESMON_OK;
}

static int32_t mb_offline(void *p) {
    struct res *r = p;
    if (is(r, "hang_offline")) hang();
    if (is(r, "hang_terminate")) return 5; /* an error: the monitor terminates */
    r->online = 0;
    return RESMON_OK;
}

static void mb_terminate(void *p) {
    struct res *r = p;
    if (is(r, "hang_terminate")) hang();
    r->online = 0;
}

static int32_t mb_looks_alive(void *p) {
    struct res *r = p;
    if (is(r, "hang_looks_alive")) hang();
    if (is(r, "abort_looks_alive")) abort();
    if (is(r, "segv_looks_alive")) raise(SIGSEGV);
    if (is(r, "needs_lock")) {
        pthread_mutex_lock(&global);
        pthread_mutex_unlock(&global);
    }
    return r->online;
}

static int32_t mb_is_alive(void *p) {
    struct res *r = p;
    if (is(r, "hang_is_alive")) hang();
    if (is(r, "slow_is_alive")) {
        /* A long check that gives up once the monitor cancels it. */
        while (!cb->should_terminate(r->handle)) usleep(5000);
        return 0;
    }
    return r->online;
}

static int32_t mb_control(void *p, uint32_t code, const uint8_t *in, size_t in_len, uint8_t *out,
                          size_t out_len, size_t *out_written) {
    (void)in;
    (void)in_len;
    struct res *r = p;
    if (code != 4) return RESMON_INVALID_FUNCTION;
    if (is(r, "hang_control")) hang();
    if (is(r, "overflow_control")) {
        memset(out, 'x', out_len + 4096);
        *out_written = out_len;
        return RESMON_OK;
    }
    if (is(r, "lying_control")) {
        *out_written = out_len + 1;
        return RESMON_OK;
    }
    if (is(r, "greedy_control")) {
        *out_written = 64u << 20;
        return RESMON_MORE_DATA;
    }
    if (is(r, "error_control")) return 87;
    int n = snprintf((char *)out, out_len, "{\"mode\":\"%s\"}", r->mode);
    *out_written = (size_t)n;
    return RESMON_OK;
}

static int32_t mb_type_control(const char *type_name, uint32_t code, const uint8_t *in,
                               size_t in_len, uint8_t *out, size_t out_len, size_t *out_written) {
    (void)type_name;
    (void)in;
    (void)in_len;
    if (code != 4) return RESMON_INVALID_FUNCTION;
    const char *text = "[\"mode\"]";
    *out_written = strlen(text);
    if (strlen(text) > out_len) return RESMON_MORE_DATA;
    memcpy(out, text, strlen(text));
    return RESMON_OK;
}

static const struct resmon_function_table table = {
    .size = sizeof(struct resmon_function_table),
    .version = RESMON_ABI_VERSION,
    .open = mb_open,
    .close = mb_close,
    .online = mb_online,
    .offline = mb_offline,
    .terminate = mb_terminate,
    .looks_alive = mb_looks_alive,
    .is_alive = mb_is_alive,
    .resource_control = mb_control,
    .resource_type_control = mb_type_control,
};

const struct resmon_function_table *resmon_startup(const char *type_name, uint32_t min_version,
                                                   uint32_t max_version,
                                                   const struct resmon_callbacks *callbacks) {
    if (strcmp(type_name, "misbehave") != 0) return NULL;
    if (min_version > RESMON_ABI_VERSION || max_version < RESMON_ABI_VERSION) return NULL;
    cb = callbacks;
    return &table;
}
