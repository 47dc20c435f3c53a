/* A plugin file whose entry point returns whatever descriptor the fuzz
 * target installed with fuzz_set_descriptor(): lets the real loader
 * (Plugin::load: dlopen, entry, descriptor checks) run on fuzzed
 * descriptors without writing a new .so per input. */
static const void *g_desc;

void fuzz_set_descriptor(const void *desc) { g_desc = desc; }

const void *basicagent_plugin_v1(void) { return g_desc; }
