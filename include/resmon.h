/*
 * resmon.h: the C ABI of resmon resource types ("resource plugins").
 *
 * A plugin is a shared library that exports resmon_startup(). The monitor
 * loads it in a host process of its own (never in the monitor itself), calls
 * resmon_startup() once per resource type it serves, and then drives each
 * resource through the entry points of the returned function table.
 *
 * Rules every plugin must follow:
 *
 *  1. Threads. Entry points are called on the host's worker threads. For one
 *     resource they are serialized (never two at once), EXCEPT terminate(),
 *     which may run at the same time as online(), offline(), looks_alive(),
 *     is_alive() and resource_control() of that resource, never with open()
 *     or close(). Whatever terminate() shares with the other entry points
 *     must be guarded (a mutex, atomics). Entry points of different
 *     resources may run at the same time.
 *
 *  2. Time. Every entry point should return within 300 ms. online() and
 *     offline() that need longer return RESMON_PENDING and go on in a thread
 *     of their own, reporting progress with set_status(handle, state,
 *     checkpoint) where checkpoint grows with each report. The monitor's
 *     pending_timeout is the longest allowed gap between two reports. The
 *     work ends with set_status(handle, RESMON_STATE_ONLINE or
 *     RESMON_STATE_OFFLINE, ...) on success, RESMON_STATE_FAILED on failure.
 *     A call that does not return within deadlock_timeout gets its whole
 *     host process killed and restarted; the resource then gets a host of
 *     its own (separate_monitor).
 *
 *  3. terminate() ends the resource at once, without cleanup, and does not
 *     wait. It must return within terminate_timeout (default 300 ms), or
 *     the host process is killed. From the moment terminate() is called,
 *     should_terminate(handle) returns 1 and set_status() returns 1: a
 *     pending online()/offline() must stop its work and return.
 *     When an offline, terminate or shutdown comes while looks_alive() or
 *     is_alive() runs, the check is cancelled: should_terminate(handle)
 *     returns 1 as well (until the next online()/offline() starts), and the
 *     check must return within terminate_timeout, or the host is killed.
 *
 *  4. Return codes. RESMON_OK (0) is success. online()/offline() may return
 *     RESMON_PENDING (997). resource_control() and resource_type_control()
 *     return RESMON_INVALID_FUNCTION (1) for a code they do not handle (the
 *     monitor's default handling then applies), and RESMON_MORE_DATA (234)
 *     with *out_written set to the size needed when out_len is too small.
 *     Any other value is an error. looks_alive() and is_alive() return
 *     nonzero for alive, 0 for not alive.
 *
 *  5. Buffers. resource_control() writes at most out_len bytes to out and
 *     sets *out_written to the number written. Writing past out_len is a
 *     bug the host contains by killing itself; the monitor restarts it.
 *     Inputs and outputs are, by convention, JSON.
 *
 *  6. Memory and handles. open() returns the plugin's own pointer for the
 *     resource (NULL on failure); the monitor passes it back unchanged to
 *     every entry point and never dereferences it. resource_handle, given to
 *     open(), is the monitor's: pass it to the callbacks, never dereference
 *     it. close() frees what open() allocated; the monitor calls terminate()
 *     first when the resource is not offline. Strings given to the plugin
 *     are valid only during the call. resource_handle is an opaque
 *     number: passing a stale or made-up one to a callback does nothing.
 *     log() also takes NULL as resource_handle, for messages about the
 *     type rather than one resource.
 *
 *  7. Crashes. A plugin that crashes (abort, a bad pointer) takes only its
 *     host process down. The monitor restarts the host; the resources that
 *     were in a call or a pending online()/offline() at the time get hosts
 *     of their own from then on, and every other resource of that host is
 *     opened again in the new host and checked with is_alive() (online
 *     again if it still is, else restarted per its policy). Nothing in a
 *     plugin's memory survives its host: keep what must outlive a restart
 *     outside the process (a file, a lock the kernel drops with the host).
 *
 *  8. Versions. resmon_startup() returns NULL when it does not serve
 *     type_name or speaks no ABI version within [min_version, max_version].
 *     The function table starts with its size and the version it speaks;
 *     fields are only ever added at the end. The table must stay valid
 *     while the library is loaded.
 */

#ifndef RESMON_H
#define RESMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RESMON_ABI_VERSION 1

/* Return codes. */
#define RESMON_OK 0
#define RESMON_INVALID_FUNCTION 1
#define RESMON_MORE_DATA 234
#define RESMON_PENDING 997

/* States, for set_status(). */
#define RESMON_STATE_OFFLINE 0
#define RESMON_STATE_ONLINE_PENDING 1
#define RESMON_STATE_ONLINE 2
#define RESMON_STATE_OFFLINE_PENDING 3
#define RESMON_STATE_FAILED 4

/* Log levels, for log(). */
#define RESMON_LOG_ERROR 0
#define RESMON_LOG_WARN 1
#define RESMON_LOG_INFO 2
#define RESMON_LOG_DEBUG 3

/* What the monitor offers the plugin. Callable from any thread. */
struct resmon_callbacks {
    uint32_t size; /* sizeof(struct resmon_callbacks) of the monitor */
    /* Progress or end of a pending online()/offline(). Returns 1 once the
     * resource is being terminated, else 0. */
    int32_t (*set_status)(void *resource_handle, int32_t state, uint32_t checkpoint);
    /* 1 once terminate() was called for the resource or a running health
     * check was cancelled, else 0; 0 again when online()/offline() starts. */
    int32_t (*should_terminate)(void *resource_handle);
    /* A message for the operator's event feed and the monitor's log. */
    void (*log)(void *resource_handle, int32_t level, const char *message);
    /* Cluster mode: the fencing token of this node's ownership of the
     * resource's group, as of the last online() (the same value the
     * monitor puts in RESMON_FENCING_TOKEN for process resources). It
     * grows with every new owner: hand it to what the resource guards so
     * that a stale owner's requests can be refused. 0 when not in cluster
     * mode. Present when size > offsetof(struct resmon_callbacks,
     * fencing_token). */
    int64_t (*fencing_token)(void *resource_handle);
};

/* The entry points of one resource type. */
struct resmon_function_table {
    uint32_t size;    /* sizeof(struct resmon_function_table) of the plugin */
    uint32_t version; /* the ABI version it speaks: RESMON_ABI_VERSION */
    void *(*open)(const char *resource_name, const char *params_json, void *resource_handle);
    void (*close)(void *resource);
    int32_t (*online)(void *resource);
    int32_t (*offline)(void *resource);
    void (*terminate)(void *resource);
    int32_t (*looks_alive)(void *resource);
    int32_t (*is_alive)(void *resource);
    int32_t (*resource_control)(void *resource, uint32_t code,
                                const uint8_t *in, size_t in_len,
                                uint8_t *out, size_t out_len, size_t *out_written);
    int32_t (*resource_type_control)(const char *type_name, uint32_t code,
                                     const uint8_t *in, size_t in_len,
                                     uint8_t *out, size_t out_len, size_t *out_written);
};

/* Exported by every plugin. */
const struct resmon_function_table *resmon_startup(const char *type_name,
                                                   uint32_t min_version,
                                                   uint32_t max_version,
                                                   const struct resmon_callbacks *callbacks);

#ifdef __cplusplus
}
#endif

#endif /* RESMON_H */
