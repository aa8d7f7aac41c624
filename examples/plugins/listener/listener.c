/*
 * An example resmon plugin in C: the "tcp-listener" resource type.
 *
 * A tcp-listener resource owns a listening TCP socket: online binds and
 * listens on params.port (on params.address, default 127.0.0.1), offline
 * and terminate close it, looks_alive says whether it is open and is_alive
 * whether the kernel still has it listening. The socket belongs to the
 * host process, so a host that dies frees the port at once.
 *
 * Build: cc -shared -fPIC -O2 -I include -o libtcp_listener.so \
 *            examples/plugins/listener/listener.c -lpthread
 */
#include "resmon.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const struct resmon_callbacks *cb;

struct listener {
    void *handle;          /* the monitor's handle, for the callbacks */
    char address[64];
    int port;
    pthread_mutex_t lock;  /* guards fd: terminate() runs beside the others */
    int fd;                /* -1 while offline */
};

/* The value of "key": NUMBER or "key": "STRING" in a flat JSON object. */
static const char *find_value(const char *json, const char *key) {
    char pattern[80];
    snprintf(pattern, sizeof pattern, "\"%s\"", key);
    const char *p = strstr(json, pattern);
    if (!p) return NULL;
    p = strchr(p + strlen(pattern), ':');
    if (!p) return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
}

static void *lst_open(const char *name, const char *params, void *handle) {
    (void)name;
    const char *port = find_value(params, "port");
    if (!port || atoi(port) <= 0 || atoi(port) > 65535) {
        cb->log(handle, RESMON_LOG_ERROR, "params.port must be a TCP port (1-65535)");
        return NULL;
    }
    struct listener *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->handle = handle;
    l->port = atoi(port);
    l->fd = -1;
    strcpy(l->address, "127.0.0.1");
    const char *addr = find_value(params, "address");
    if (addr && *addr == '"') {
        const char *end = strchr(addr + 1, '"');
        size_t n = end ? (size_t)(end - addr - 1) : 0;
        if (n == 0 || n >= sizeof l->address) {
            cb->log(handle, RESMON_LOG_ERROR, "params.address must be an IPv4 address");
            free(l);
            return NULL;
        }
        memcpy(l->address, addr + 1, n);
        l->address[n] = 0;
    }
    struct in_addr check;
    if (inet_pton(AF_INET, l->address, &check) != 1) {
        cb->log(handle, RESMON_LOG_ERROR, "params.address must be an IPv4 address");
        free(l);
        return NULL;
    }
    pthread_mutex_init(&l->lock, NULL);
    return l;
}

static void lst_close(void *r) {
    struct listener *l = r;
    if (l->fd >= 0) close(l->fd);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

static int32_t lst_online(void *r) {
    struct listener *l = r;
    char msg[160];
    pthread_mutex_lock(&l->lock);
    if (l->fd < 0) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(l->port)};
        inet_pton(AF_INET, l->address, &sa.sin_addr);
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 64) != 0) {
            snprintf(msg, sizeof msg, "cannot listen on %s:%d: %m", l->address, l->port);
            if (fd >= 0) close(fd);
            pthread_mutex_unlock(&l->lock);
            cb->log(l->handle, RESMON_LOG_ERROR, msg);
            return 2;
        }
        l->fd = fd;
    }
    pthread_mutex_unlock(&l->lock);
    snprintf(msg, sizeof msg, "listening on %s:%d", l->address, l->port);
    cb->log(l->handle, RESMON_LOG_INFO, msg);
    return RESMON_OK;
}

static void drop_socket(struct listener *l) {
    pthread_mutex_lock(&l->lock);
    if (l->fd >= 0) close(l->fd);
    l->fd = -1;
    pthread_mutex_unlock(&l->lock);
}

static int32_t lst_offline(void *r) {
    drop_socket(r);
    return RESMON_OK;
}

static void lst_terminate(void *r) { drop_socket(r); }

static int32_t lst_looks_alive(void *r) {
    struct listener *l = r;
    pthread_mutex_lock(&l->lock);
    int alive = l->fd >= 0;
    pthread_mutex_unlock(&l->lock);
    return alive;
}

static int32_t lst_is_alive(void *r) {
    struct listener *l = r;
    int listening = 0;
    socklen_t len = sizeof listening;
    pthread_mutex_lock(&l->lock);
    int ok = l->fd >= 0 && getsockopt(l->fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0;
    pthread_mutex_unlock(&l->lock);
    return ok && listening;
}

/* Control code 4 (get private properties): {"address":...,"port":...,"listening":...} */
static int32_t lst_control(void *r, uint32_t code, const uint8_t *in, size_t in_len,
                           uint8_t *out, size_t out_len, size_t *out_written) {
    (void)in;
    (void)in_len;
    struct listener *l = r;
    if (code != 4) return RESMON_INVALID_FUNCTION;
    char text[160];
    int n = snprintf(text, sizeof text, "{\"address\":\"%s\",\"port\":%d,\"listening\":%s}",
                     l->address, l->port, lst_looks_alive(l) ? "true" : "false");
    *out_written = (size_t)n;
    if ((size_t)n > out_len) return RESMON_MORE_DATA;
    memcpy(out, text, (size_t)n);
    return RESMON_OK;
}

static const struct resmon_function_table table = {
    .size = sizeof(struct resmon_function_table),
    .version = RESMON_ABI_VERSION,
    .open = lst_open,
    .close = lst_close,
    .online = lst_online,
    .offline = lst_offline,
    .terminate = lst_terminate,
    .looks_alive = lst_looks_alive,
    .is_alive = lst_is_alive,
    .resource_control = lst_control,
    .resource_type_control = NULL,
};

const struct resmon_function_table *resmon_startup(const char *type_name, uint32_t min_version,
                                                   uint32_t max_version,
                                                   const struct resmon_callbacks *callbacks) {
    if (strcmp(type_name, "tcp-listener") != 0) return NULL;
    if (min_version > RESMON_ABI_VERSION || max_version < RESMON_ABI_VERSION) return NULL;
    cb = callbacks;
    return &table;
}
