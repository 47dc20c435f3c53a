/*
 * getinfo.hello -- a BasicAgent plugin written in C against
 * basicagent_plugin.h alone. It proves the header is a real C ABI.
 *
 *   BasicAgentCtl -c getinfo.hello -a "-n world"
 *   {"resp":"success","retcode":2,"message":"Normal termination",
 *    "data":{"greeting":"hello, world","calls":1,"language":"C"}}
 *
 * Build: cc -Wall -Wextra -Werror -pedantic -std=c11 -O2 -fPIC -shared \
 *          -I abi/include -o libgetinfo_hello.so getinfo_hello.c
 */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "basicagent_plugin.h"

static const ba_host_api *host;
static atomic_ulong calls;

static void say(uint32_t level, const char *text) {
    if (host != NULL && host->log != NULL) {
        host->log(level, text, strlen(text));
    }
}

static ba_status hello_init(const ba_host_api *api) {
    if (api == NULL || api->abi_version != BA_ABI_VERSION || api->complete == NULL) {
        return BA_STATUS_FAILED;
    }
    host = api;
    say(BA_LOG_DEBUG, "getinfo_hello: init");
    return BA_STATUS_OK;
}

/* Finds the value of "args" in the request: a minimal scan, enough for a
 * demonstration (no escapes in the value). Copies at most cap-1 bytes. */
static void find_args(const char *req, size_t len, char *out, size_t cap) {
    static const char key[] = "\"args\":\"";
    size_t klen = sizeof key - 1;
    out[0] = '\0';
    for (size_t i = 0; i + klen <= len; i++) {
        if (memcmp(req + i, key, klen) == 0) {
            size_t j = i + klen, n = 0;
            while (j < len && req[j] != '"' && req[j] != '\\' && n + 1 < cap) {
                out[n++] = req[j++];
            }
            out[n] = '\0';
            return;
        }
    }
}

static int json_safe(const char *s) {
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80) {
            return 0;
        }
    }
    return 1;
}

static void hello_call(ba_call_id call, const char *request, size_t request_len) {
    char args[128];
    char data[256];
    const char *who = "world";
    unsigned long n = atomic_fetch_add(&calls, 1) + 1;

    find_args(request, request_len, args, sizeof args);
    if (args[0] != '\0') {
        if (strncmp(args, "-n ", 3) != 0 || args[3] == '\0' || !json_safe(args + 3)) {
            static const char msg[] = "Invalid params: usage: -n NAME (letters, digits, spaces)";
            host->complete(call, BA_RETCODE_INVALID_PARAMS, msg, sizeof msg - 1, NULL, 0);
            return;
        }
        who = args + 3;
    }
    int len = snprintf(data, sizeof data, "{\"greeting\":\"hello, %s\",\"calls\":%lu,\"language\":\"C\"}", who, n);
    if (len < 0 || (size_t)len >= sizeof data) {
        static const char msg[] = "greeting too long";
        host->complete(call, BA_RETCODE_PLUGIN_FAILURE, msg, sizeof msg - 1, NULL, 0);
        return;
    }
    host->complete(call, BA_RETCODE_SUCCESS, NULL, 0, data, (size_t)len);
}

static void hello_fini(void) { say(BA_LOG_DEBUG, "getinfo_hello: fini"); }

static const char *const hello_methods[] = {"getinfo.hello", NULL};

static const ba_plugin_descriptor hello_descriptor = {
    .abi_version = BA_ABI_VERSION,
    .size = sizeof(ba_plugin_descriptor),
    .name = "getinfo_hello",
    .version = "1.0.0",
    .description = "example plugin written in C: says hello",
    .methods = hello_methods,
    .usage = "args: [-n NAME]   data: {\"greeting\": \"hello, NAME\", \"calls\": N, \"language\": \"C\"}",
    .init = hello_init,
    .call = hello_call,
    .cancel = NULL,
    .fini = hello_fini,
};

const ba_plugin_descriptor *basicagent_plugin_v1(void) { return &hello_descriptor; }
