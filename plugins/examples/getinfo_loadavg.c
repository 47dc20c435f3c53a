/*
 * getinfo.loadavg -- a BasicAgent plugin in C that reads its request
 * without a JSON parser: options through getopt(3) on the argv the host
 * splits from "args" (args_argv), named parameters through param_str and
 * param_bool (ABI 1.1). Built against the installed header alone:
 *
 *   cc -Wall -Wextra -Werror -pedantic -std=c11 -O2 -fPIC -shared \
 *      $(pkg-config --cflags basicagent-plugin) \
 *      -o libgetinfo_loadavg.so getinfo_loadavg.c
 *
 *   BasicAgentCtl -c getinfo.loadavg -a "-p -d 1" -j '{"label":"web"}'
 *   {"resp":"success","retcode":2,"message":"Normal termination",
 *    "data":{"load":[0.3,0.2,0.1],"running":1,"total":312,"label":"web"}}
 *
 * Request: "args": "[-p] [-d DIGITS]" (-p: also the process counts; -d:
 * 0..6 decimals, default 2); "per_cpu": true divides by the online CPUs;
 * "label": any string, echoed (escaped) in the answer.
 */
#define _POSIX_C_SOURCE 200809L /* getopt, strerror_r, O_CLOEXEC */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basicagent_plugin.h"

static const ba_host_api *host;

static const char usage[] =
    "args: [-p] [-d DIGITS]  (-p: process counts; -d: 0..6 decimals, default 2)\n"
    "params: \"per_cpu\": bool (divide by online CPUs), \"label\": string (echoed)\n"
    "data: {\"load\":[1m,5m,15m],\"running\":N,\"total\":N,\"label\":\"...\"}";

/* The short form for messages. */
static const char args_usage[] = "[-p] [-d DIGITS]";

static void fail(ba_call_id call, uint32_t retcode, const char *message) {
    host->complete(call, retcode, message, strlen(message), NULL, 0);
}

static ba_status loadavg_init(const ba_host_api *api) {
    if (api == NULL || api->abi_version != BA_ABI_VERSION || api->complete == NULL) {
        return BA_STATUS_FAILED;
    }
    /* This plugin needs the ABI 1.1 readers: refuse an older host. */
    if (!BA_HOST_HAS(api, args_argv) || api->args_argv == NULL || api->param_str == NULL ||
        api->param_bool == NULL) {
        return BA_STATUS_FAILED;
    }
    host = api;
    return BA_STATUS_OK;
}

/* Appends `s` to out[*n..cap) as a JSON string body; 0 if it did not fit. */
static int put_escaped(char *out, size_t cap, size_t *n, const char *s, size_t len) {
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        size_t elen;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            elen = 2;
        } else if (c < 0x20) {
            elen = (size_t)snprintf(esc, sizeof esc, "\\u%04x", c);
        } else {
            esc[0] = (char)c;
            elen = 1;
        }
        if (*n + elen >= cap) {
            return 0;
        }
        memcpy(out + *n, esc, elen);
        *n += elen;
    }
    out[*n] = '\0';
    return 1;
}

static void loadavg_call(ba_call_id call, const char *request, size_t request_len) {
    (void)request; /* read through the host's readers instead */
    (void)request_len;
    int argc;
    char **argv;
    switch (host->args_argv(call, &argc, &argv)) {
    case BA_STATUS_OK:
        break;
    case BA_STATUS_BAD_REQUEST:
        fail(call, BA_RETCODE_INVALID_REQUEST, "Invalid request: not a JSON object");
        return;
    default: /* WRONG_TYPE (args not a string), BAD_ARGS (a lone quote) */
        fail(call, BA_RETCODE_INVALID_PARAMS, "Invalid params: \"args\" must be a string of options");
        return;
    }
    /* getopt keeps its state in process-wide globals shared with every
     * plugin: parse inside `call` only, reset with optind = 0 (glibc and
     * musl: a full reset), and never let it print (opterr = 0). */
    int show_procs = 0;
    long digits = 2;
    int opt;
    char message[512]; /* room for the usage text: -Wformat-truncation checks */
    optind = 0;
    opterr = 0;
    while ((opt = getopt(argc, argv, ":pd:")) != -1) {
        switch (opt) {
        case 'p':
            show_procs = 1;
            break;
        case 'd': {
            char *end;
            errno = 0;
            digits = strtol(optarg, &end, 10);
            if (errno != 0 || *end != '\0' || end == optarg || digits < 0 || digits > 6) {
                snprintf(message, sizeof message,
                         "Invalid params: -d takes 0..6, not \"%.40s\"; usage: %s", optarg, args_usage);
                fail(call, BA_RETCODE_INVALID_PARAMS, message);
                return;
            }
            break;
        }
        case ':':
            snprintf(message, sizeof message, "Invalid params: -%c needs a value; usage: %s", optopt,
                     args_usage);
            fail(call, BA_RETCODE_INVALID_PARAMS, message);
            return;
        default:
            snprintf(message, sizeof message, "Invalid params: unknown option -%c; usage: %s",
                     optopt, args_usage);
            fail(call, BA_RETCODE_INVALID_PARAMS, message);
            return;
        }
    }
    if (optind < argc) {
        snprintf(message, sizeof message, "Invalid params: unexpected operand \"%.40s\"; usage: %s",
                 argv[optind], args_usage);
        fail(call, BA_RETCODE_INVALID_PARAMS, message);
        return;
    }
    int per_cpu = 0; /* the default stays when the key is absent */
    ba_status st = host->param_bool(call, "per_cpu", &per_cpu);
    if (st != BA_STATUS_OK && st != BA_STATUS_NOT_FOUND) {
        fail(call, BA_RETCODE_INVALID_PARAMS, "Invalid params: \"per_cpu\" must be true or false");
        return;
    }
    const char *label = NULL;
    size_t label_len = 0;
    st = host->param_str(call, "label", &label, &label_len);
    if (st != BA_STATUS_OK && st != BA_STATUS_NOT_FOUND) {
        fail(call, BA_RETCODE_INVALID_PARAMS, "Invalid params: \"label\" must be a string");
        return;
    }

    /* Close-on-exec: the host forks (sync.bash), and a child must not
     * inherit our descriptors. */
    int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    char text[128];
    ssize_t got = fd < 0 ? -1 : read(fd, text, sizeof text - 1);
    int err = errno;
    if (fd >= 0) {
        close(fd);
    }
    double load[3];
    long running = 0, total = 0;
    if (got <= 0) {
        char reason[96] = "empty";
        if (got < 0) {
            strerror_r(err, reason, sizeof reason); /* the XSI one, by _POSIX_C_SOURCE */
        }
        snprintf(message, sizeof message, "Plugin failure: cannot read /proc/loadavg: %s", reason);
        fail(call, BA_RETCODE_PLUGIN_FAILURE, message);
        return;
    }
    text[got] = '\0';
    if (sscanf(text, "%lf %lf %lf %ld/%ld", &load[0], &load[1], &load[2], &running, &total) != 5) {
        fail(call, BA_RETCODE_PLUGIN_FAILURE, "Plugin failure: /proc/loadavg has an unknown format");
        return;
    }
    if (per_cpu) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        if (cpus > 0) {
            for (int i = 0; i < 3; i++) {
                load[i] /= (double)cpus;
            }
        }
    }
    char data[1024];
    int n = snprintf(data, sizeof data, "{\"load\":[%.*f,%.*f,%.*f]", (int)digits, load[0],
                     (int)digits, load[1], (int)digits, load[2]);
    size_t len = (size_t)n;
    if (show_procs) {
        len += (size_t)snprintf(data + len, sizeof data - len, ",\"running\":%ld,\"total\":%ld",
                                running, total);
    }
    if (label != NULL) {
        len += (size_t)snprintf(data + len, sizeof data - len, ",\"label\":\"");
        if (!put_escaped(data, sizeof data - 2, &len, label, label_len)) {
            fail(call, BA_RETCODE_INVALID_PARAMS, "Invalid params: \"label\" is too long");
            return;
        }
        data[len++] = '"';
    }
    data[len++] = '}';
    /* The label's memory is the host's until this call: complete last. */
    host->complete(call, BA_RETCODE_SUCCESS, NULL, 0, data, len);
}

static const char *const loadavg_methods[] = {"getinfo.loadavg", NULL};

static const ba_plugin_descriptor loadavg_descriptor = {
    .abi_version = BA_ABI_VERSION,
    .size = sizeof(ba_plugin_descriptor),
    .name = "getinfo_loadavg",
    .version = "1.1.0",
    .description = "load averages from /proc/loadavg (C example, ABI 1.1 readers)",
    .methods = loadavg_methods,
    .usage = usage,
    .init = loadavg_init,
    .call = loadavg_call,
    .cancel = NULL,
    .fini = NULL,
};

const ba_plugin_descriptor *basicagent_plugin_v1(void) { return &loadavg_descriptor; }
