/*
 * basicagent_plugin.h -- the BasicAgent plugin ABI, version 1 (1.1: the
 * request readers param_* and args_argv at the end of ba_host_api).
 *
 * Installed as <basicagent/basicagent_plugin.h>; compile with
 *   cc $(pkg-config --cflags basicagent-plugin) -fPIC -shared ...
 *
 * This header is the contract between the BasicAgent host (the daemon
 * `BasicAgent` and the ctl tool `BasicAgentCtl`) and a plugin: a shared
 * object named `lib<namespace>_<name>.so` that serves the method
 * `<namespace>.<name>` (for example libgetinfo_users.so serves
 * getinfo.users).
 *
 * Rules (see docs/plugins.md for the full guide):
 *
 *  - The plugin exports one symbol, BA_ENTRY_SYMBOL_V1, a function that
 *    returns a pointer to a static, immutable ba_plugin_descriptor.
 *  - Structs start with abi_version and size. They only ever grow at the
 *    end; the reader checks `size` before touching a field past the
 *    version-1 layout.
 *  - Bytes cross the boundary as (pointer, length). The receiver copies
 *    what it wants to keep before the call returns. Neither side ever
 *    frees memory the other side allocated.
 *  - A call is identified by a ba_call_id chosen by the host. The plugin
 *    completes every call exactly once through ba_host_api.complete, either
 *    before `call` returns or later from any thread. Completing an unknown
 *    or already completed call is harmless: complete() returns
 *    BA_STATUS_UNKNOWN_CALL and does nothing.
 *  - The host loads plugins with RTLD_NOW | RTLD_LOCAL and never unloads
 *    them. `fini` is called at orderly shutdown; the code stays mapped.
 *  - No C++ exception, longjmp or Rust panic may cross the boundary.
 */
#ifndef BASICAGENT_PLUGIN_H
#define BASICAGENT_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI major version. A host refuses a plugin of another version. */
#define BA_ABI_VERSION 1u

/* The name of the entry symbol carries the ABI major version. */
#define BA_ENTRY_SYMBOL_V1 "basicagent_plugin_v1"

/* Result codes (the wire protocol's retcode). Values never change. */
#define BA_RETCODE_SUCCESS 2u
#define BA_RETCODE_INVALID_REQUEST 3020u
#define BA_RETCODE_INVALID_PARAMS 3021u
#define BA_RETCODE_UNKNOWN_METHOD 3022u
#define BA_RETCODE_TIMEOUT 3023u
#define BA_RETCODE_UNKNOWN_USER 3024u
#define BA_RETCODE_PLUGIN_FAILURE 3025u
#define BA_RETCODE_BUSY 3026u
#define BA_RETCODE_PERMISSION_DENIED 3027u
#define BA_RETCODE_CANCELLED 3028u

/* Status returned by host and plugin functions. */
typedef enum ba_status {
    BA_STATUS_OK = 0,
    /* No such call in flight: never issued, or already completed. */
    BA_STATUS_UNKNOWN_CALL = 1,
    /* A NULL pointer where one is required, or a (NULL, len > 0) pair.
     * From complete(): the call is completed anyway, with
     * BA_RETCODE_PLUGIN_FAILURE, and is no longer pending. */
    BA_STATUS_INVALID_ARGUMENT = 2,
    /* init(): the plugin cannot run here. */
    BA_STATUS_FAILED = 3,
    /* param_*(): the request has no such top-level key, or its value is
     * null. The output is left unchanged (keep your default in it). */
    BA_STATUS_NOT_FOUND = 4,
    /* param_*(): the value has another JSON type, or does not fit (an
     * int64 parameter that is 1.5 or 2^63); args_argv(): "args" is not a
     * string. Answer BA_RETCODE_INVALID_PARAMS. */
    BA_STATUS_WRONG_TYPE = 5,
    /* param_*(), args_argv(): the request is not one JSON object with
     * distinct keys. Answer BA_RETCODE_INVALID_REQUEST. */
    BA_STATUS_BAD_REQUEST = 6,
    /* args_argv(): "args" does not split (an unterminated quote) or a word
     * holds a NUL character. Answer BA_RETCODE_INVALID_PARAMS. */
    BA_STATUS_BAD_ARGS = 7
} ba_status;

/* Log levels for ba_host_api.log (the `log` crate's levels). */
typedef enum ba_log_level {
    BA_LOG_ERROR = 1,
    BA_LOG_WARN = 2,
    BA_LOG_INFO = 3,
    BA_LOG_DEBUG = 4,
    BA_LOG_TRACE = 5
} ba_log_level;

/* Identifies one call from the host to the plugin. Never 0. */
typedef uint64_t ba_call_id;

/*
 * What the host gives the plugin at init. Valid, and unchanged, for the
 * life of the process: the plugin may keep the pointer.
 */
typedef struct ba_host_api {
    uint32_t abi_version; /* BA_ABI_VERSION of the host */
    uint32_t size;        /* sizeof(ba_host_api) as the host knows it */

    /* Writes one message to the host's log (the daemon's log file, or the
     * ctl tool's stderr). Thread-safe. `msg` need not be NUL-terminated. */
    void (*log)(uint32_t level, const char *msg, size_t msg_len);

    /*
     * Completes a call. Thread-safe, callable from any thread, exactly once
     * per call. `retcode` is one of BA_RETCODE_*. `message` is a short
     * human-readable text (UTF-8; invalid bytes become U+FFFD) that starts
     * with the retcode's standard text, e.g. "Invalid params: -n needs a
     * number"; when message_len is 0 the host uses the standard text alone.
     * `data` is a JSON value (UTF-8) or NULL with data_len 0 for none. The
     * host copies everything before it returns. Invalid JSON in `data`
     * turns the response into BA_RETCODE_PLUGIN_FAILURE. Returns
     * BA_STATUS_OK, BA_STATUS_UNKNOWN_CALL (not pending: nothing happens)
     * or BA_STATUS_INVALID_ARGUMENT (a NULL pointer with a length > 0: the
     * call is answered BA_RETCODE_PLUGIN_FAILURE and is no longer pending).
     * After complete() the call's param_* and args_argv memory is freed.
     */
    ba_status (*complete)(ba_call_id call, uint32_t retcode,
                          const char *message, size_t message_len,
                          const char *data, size_t data_len);

    /* Host settings for plugins, a JSON object (UTF-8, not NUL-terminated),
     * e.g. {"max_output":1048576,"max_output_limit":16777216}. Unknown keys
     * must be ignored. */
    const char *config;
    size_t config_len;

    /* The most verbose ba_log_level the host writes; a plugin may skip
     * formatting messages above it. */
    uint32_t max_log_level;

    /* ---- ABI 1.1: reading the request without a JSON parser. ----
     *
     * Present when BA_HOST_HAS(host, field) (the host's `size` covers the
     * field); a host of ABI 1.0 has none of them. All are thread-safe and
     * callable from any thread while the call is pending. They read the
     * request the host passed to `call` (the same bytes): its top-level
     * members only, never nested objects. Out values point to memory the
     * host owns and keeps **until the call is completed**: copy what you
     * need before you call complete(), never free it. On any status but
     * BA_STATUS_OK the outputs are left unchanged. A request that is not
     * one JSON object with distinct keys gives BA_STATUS_BAD_REQUEST for
     * every key. Keys are NUL-terminated UTF-8 and compared exactly.
     * Returns BA_STATUS_UNKNOWN_CALL for a call not pending, and
     * BA_STATUS_INVALID_ARGUMENT for a NULL key or output pointer. */

    /* A string parameter: *val is its UTF-8 text after JSON unescaping,
     * NUL-terminated, *len its length in bytes without the NUL (a value
     * holding \u0000 is longer than strlen says). `len` may be NULL. */
    ba_status (*param_str)(ba_call_id call, const char *key,
                           const char **val, size_t *len);

    /* An integer parameter: a JSON number without fraction or exponent
     * that fits int64_t (5, -3; not 5.0, 1e3 or "5"). */
    ba_status (*param_int64)(ba_call_id call, const char *key, int64_t *val);

    /* A number parameter, any JSON number as the nearest double. */
    ba_status (*param_double)(ba_call_id call, const char *key, double *val);

    /* A boolean parameter: JSON true (*val = 1) or false (*val = 0). */
    ba_status (*param_bool)(ba_call_id call, const char *key, int *val);

    /*
     * The request's "args" string split into an argv for getopt(3), by the
     * rule of docs/plugins.md: whitespace separates words; '...' is
     * literal; in "..." only \" and \\ are escapes; outside quotes a
     * backslash makes the next character literal; adjacent pieces join;
     * '' is an empty word; "--" and clusters like "-rr" are passed as
     * they are.
     * (*argv)[0] is the request's "method" (else the plugin's name),
     * (*argv)[*argc] is NULL. "args" absent or null gives *argc == 1.
     * The array and the strings are the host's, writable (getopt may
     * permute the array), valid until the call is completed; every call
     * of args_argv for one call id returns the same array.
     */
    ba_status (*args_argv)(ba_call_id call, int *argc, char ***argv);
} ba_host_api;

/* Whether the host's table has `field` (ABI 1.1 fields and later). Use it
 * before calling any function past max_log_level:
 *   if (BA_HOST_HAS(host, param_str) && host->param_str != NULL) ... */
#define BA_HOST_HAS(host, field)                                            \
    ((host)->size >= offsetof(ba_host_api, field) + sizeof((host)->field))

/*
 * What the plugin exports. Static and immutable; every string is
 * NUL-terminated UTF-8 with static lifetime.
 */
typedef struct ba_plugin_descriptor {
    uint32_t abi_version; /* must be BA_ABI_VERSION */
    uint32_t size;        /* sizeof(ba_plugin_descriptor) */

    const char *name;        /* file stem without "lib", e.g. "getinfo_users" */
    const char *version;     /* the plugin's own version, e.g. "0.1.0" */
    const char *description; /* one line */
    const char *const *methods; /* NULL-terminated, e.g. {"getinfo.users", NULL} */
    const char *usage;       /* arguments and output, shown by BasicAgentCtl -l */

    /* Called once, before any call, on the host's thread, with the host's
     * loader lock held: it may do short blocking work (read a file), but
     * every other first call of any plugin waits for it. Returns
     * BA_STATUS_OK, or BA_STATUS_FAILED to refuse to run (the host then
     * answers BA_RETCODE_PLUGIN_FAILURE for its methods). May be NULL. */
    ba_status (*init)(const ba_host_api *host);

    /* Starts one call. `request` is the whole request object as JSON bytes
     * (not NUL-terminated), including "method" and, from the daemon, "id":
     * from the daemon the very frame the server sent (escapes as sent,
     * without the trailing newline), from BasicAgentCtl the object it
     * built. Valid until `call` returns; the param_* and args_argv readers
     * give its top-level members until the call is completed.
     * Must not block: slow work goes to a thread of the plugin's own, which
     * completes the call later. */
    void (*call)(ba_call_id call, const char *request, size_t request_len);

    /* Asks the plugin to stop a call in flight; the plugin then completes it
     * (normally with BA_RETCODE_CANCELLED). A call already completed or
     * unknown is ignored. Must not block. May be NULL. */
    void (*cancel)(ba_call_id call);

    /* Called once at orderly shutdown after the last call completed or was
     * cancelled. May be NULL. */
    void (*fini)(void);
} ba_plugin_descriptor;

/* The entry point every plugin exports. */
typedef const ba_plugin_descriptor *(*ba_plugin_entry_v1)(void);
const ba_plugin_descriptor *basicagent_plugin_v1(void);

#ifdef __cplusplus
}
#endif

#endif /* BASICAGENT_PLUGIN_H */
