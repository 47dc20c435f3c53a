/*
 * basicagent_plugin.h -- the BasicAgent plugin ABI, version 1.
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
    BA_STATUS_UNKNOWN_CALL = 1, /* complete(): no such call in flight */
    BA_STATUS_INVALID_ARGUMENT = 2, /* a NULL pointer or bad length */
    BA_STATUS_FAILED = 3 /* init(): the plugin cannot run here */
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
     * human-readable text (UTF-8); when message_len is 0 the host uses the
     * retcode's standard message. `data` is a JSON value (UTF-8) or NULL
     * with data_len 0 for none. The host copies everything before it
     * returns. Invalid JSON in `data` turns the response into
     * BA_RETCODE_PLUGIN_FAILURE.
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
} ba_host_api;

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

    /* Called once, before any call, on the host's thread. Returns
     * BA_STATUS_OK, or BA_STATUS_FAILED to refuse to run (the host then
     * answers BA_RETCODE_PLUGIN_FAILURE for its methods). May be NULL. */
    ba_status (*init)(const ba_host_api *host);

    /* Starts one call. `request` is the whole request object as JSON bytes
     * (not NUL-terminated), including "method" and, from the daemon, "id".
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
