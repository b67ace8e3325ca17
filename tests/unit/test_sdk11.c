/*
 * test_sdk11.c - SDK 1.1 on the host side:
 * - a plugin built against the 1.0 header (tests/fixtures/sdk-1.0) loads
 *   into the 1.1 host and runs: apply rewrites, evaluate scores;
 * - one built for a newer minor is refused with its reason;
 * - the typed config accessors read strings, numbers, integers, booleans,
 *   lists and defaults from the overlay's `config:` during init();
 * - a rule's `passed` is the host's to decide from the overlay's
 *   rule_pass_mark, whatever the plugin set.
 * Plugins are loaded from private copies of the test plugins (tp_common.h's
 * folder), single-threaded.
 */
#include "hostapi.h"
#include "loader.h"
#include "registry.h"
#include "request.h"

#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

#include "test_fs.h"

static char last_log[1024];

static void capture_log(fusion_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void capture_log(fusion_log_level level, const char *fmt, ...)
{
    (void)level;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_log, sizeof(last_log), fmt, ap);
    va_end(ap);
}

typedef struct fixture {
    char root[64];
    char plugins[PATH_MAX];
    char cache[PATH_MAX];
    fusion_host_api host; /* the real table, logging captured */
    const char *config_json;
    double pass_mark;
    fh_registry *reg;
} fixture;

static int inputs(void *ud, const char *name, fh_overlay_inputs *in)
{
    (void)name;
    fixture *f = ud;
    memset(in, 0, sizeof(*in));
    in->config_json = f->config_json;
    in->rule_pass_mark = f->pass_mark;
    return 0;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->root, sizeof(f->root), "/tmp/fh_sdk11_XXXXXX");
    assert_non_null(mkdtemp(f->root));
    assert_int_equal(chmod(f->root, 0755), 0);
    xsnprintf(f->plugins, sizeof(f->plugins), "%s/plugins", f->root);
    assert_int_equal(mkdir(f->plugins, 0755), 0);
    xsnprintf(f->cache, sizeof(f->cache), "%s/cache", f->root);
    f->host = *fh_host_api();
    f->host.log = capture_log;
    fh_registry_opts o = {.loader = {.cache_dir = f->cache, .daemon_uid = getuid()},
                          .host_api = &f->host,
                          .inputs_for = inputs,
                          .inputs_ud = f};
    f->reg = fh_registry_new(&o);
    assert_non_null(f->reg);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    fh_registry_free(f->reg, 1000);
    remove_tree(f->root);
    free(f);
    return 0;
}

/* Loads the test plugin `name` from a private copy; returns the result. */
static fh_load_err load(fixture *f, const char *name, char *msg, size_t len)
{
    char from[PATH_MAX], to[PATH_MAX];
    xsnprintf(from, sizeof(from), "%s/%s.so", FH_TEST_PLUGIN_DIR, name);
    xsnprintf(to, sizeof(to), "%s/%s.so", f->plugins, name);
    copy_file(from, to, 0644);
    return fh_registry_load(f->reg, to, msg, len, NULL);
}

static void test_abi10_plugin_runs(void **state)
{
    fixture *f = *state;
    f->config_json = "{\"x\":1}";
    char msg[1024] = "";
    assert_int_equal(load(f, "abi10", msg, sizeof(msg)), FH_LOAD_OK);
    fh_overlay_info info;
    assert_int_equal(fh_registry_get(f->reg, "abi10", &info), 0);
    assert_int_equal(info.abi_major, 1);
    assert_int_equal(info.abi_minor, 0);
    assert_non_null(strstr(last_log, "abi10 init: config {\"x\":1}"));

    fh_generation *g = fh_registry_acquire(f->reg, "abi10", NULL);
    assert_non_null(g);
    const char *body = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    char err[256];
    fusion_request *req = fh_request_parse(body, strlen(body), err, sizeof(err));
    assert_non_null(req);
    assert_int_equal(fh_generation_apply(g, req), 0);
    char *out = fh_request_dump(req, 0);
    assert_non_null(strstr(out, "abi10 directive"));
    assert_non_null(strstr(out, "\"temperature\":0.3"));
    free(out);
    fusion_evaluation ev;
    assert_int_equal(fh_generation_evaluate(g, req, "a long enough answer", 20, &ev), 0);
    assert_int_equal(ev.rule_count, 1);
    assert_true(ev.rules[0].passed); /* 0.6 against the default mark 0.5 */
    fh_request_free(req);
    fh_generation_release(g);
}

static void test_newer_minor_refused(void **state)
{
    fixture *f = *state;
    char msg[1024] = "";
    assert_int_equal(load(f, "bad_minor", msg, sizeof(msg)), FH_LOAD_ABI_MINOR);
    assert_non_null(strstr(msg, "bad_minor"));
}

static void test_config_accessors(void **state)
{
    fixture *f = *state;
    f->config_json = "{\"tone\":\"calm\",\"temperature\":0.25,\"limits\":{\"max_tokens\":512},"
                     "\"strict\":true,\"keywords\":[\"refund\",\"ledger\",\"idempotency\"]}";
    char msg[1024] = "";
    assert_int_equal(load(f, "cfg_reader", msg, sizeof(msg)), FH_LOAD_OK);
    assert_string_equal(last_log, "cfg tone=calm temp=0.25 max=512 strict=1 missing=dflt "
                                  "keywords=3:refund,ledger,idempotency wrongtype=7");
}

static void test_config_defaults(void **state)
{
    fixture *f = *state;
    /* Every key absent or of another type: the defaults. */
    f->config_json = "{\"temperature\":\"hot\",\"limits\":{\"max_tokens\":3.5},\"strict\":1,"
                     "\"keywords\":\"not a list\"}";
    char msg[1024] = "";
    assert_int_equal(load(f, "cfg_reader", msg, sizeof(msg)), FH_LOAD_OK);
    assert_string_equal(last_log, "cfg tone=none temp=-1.00 max=-1 strict=0 missing=dflt "
                                  "keywords=0: wrongtype=7");
}

static void test_rule_pass_mark_is_the_hosts(void **state)
{
    fixture *f = *state;
    f->config_json = "{}";
    f->pass_mark = 0.7;
    char msg[1024] = "";
    assert_int_equal(load(f, "abi10", msg, sizeof(msg)), FH_LOAD_OK);
    fh_generation *g = fh_registry_acquire(f->reg, "abi10", NULL);
    assert_non_null(g);
    const char *body = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    char err[256];
    fusion_request *req = fh_request_parse(body, strlen(body), err, sizeof(err));
    fusion_evaluation ev;
    assert_int_equal(fh_generation_evaluate(g, req, "a long enough answer", 20, &ev), 0);
    /* The plugin (1.0 header) said passed at 0.5; the overlay's mark is 0.7. */
    assert_true(ev.rules[0].score > 0.59 && ev.rules[0].score < 0.61);
    assert_false(ev.rules[0].passed);
    fh_request_free(req);
    fh_generation_release(g);
}

/* The accessors alone, on init args built as the host builds them. */
static void test_config_type_and_keys(void **state)
{
    (void)state;
    const char *text = "{\"a\":1,\"b\":\"x\",\"c\":[true,null],\"d\":{\"e\":false}}";
    json_t *tree = json_loads(text, 0, NULL);
    assert_non_null(tree);
    fusion_init_args a = {.size = sizeof(a),
                          .host = fh_host_api(),
                          .config_json = text,
                          .config_len = strlen(text),
                          .host_config = tree};
    const fusion_host_api *h = fh_host_api();
    assert_int_equal(h->config_type(&a, ""), FUSION_CONFIG_OBJECT);
    assert_int_equal(h->config_type(&a, "a"), FUSION_CONFIG_NUMBER);
    assert_int_equal(h->config_type(&a, "b"), FUSION_CONFIG_STRING);
    assert_int_equal(h->config_type(&a, "c"), FUSION_CONFIG_LIST);
    assert_int_equal(h->config_type(&a, "c.0"), FUSION_CONFIG_BOOL);
    assert_int_equal(h->config_type(&a, "c.1"), FUSION_CONFIG_NULL);
    assert_int_equal(h->config_type(&a, "c.2"), FUSION_CONFIG_ABSENT);
    assert_int_equal(h->config_type(&a, "d.e"), FUSION_CONFIG_BOOL);
    assert_int_equal(h->config_type(&a, "zz"), FUSION_CONFIG_ABSENT);
    /* Keys in the file's order; NULL past the last, and for a non-object. */
    assert_string_equal(h->config_key(&a, "", 0), "a");
    assert_string_equal(h->config_key(&a, "", 3), "d");
    assert_null(h->config_key(&a, "", 4));
    assert_string_equal(h->config_key(&a, "d", 0), "e");
    assert_null(h->config_key(&a, "a", 0));
    assert_int_equal(h->config_bool(&a, "d.e", 1), 0);
    /* Init args of a 1.0 layout (smaller size): nothing, never a crash. */
    a.size = (uint32_t)offsetof(fusion_init_args, host_config);
    assert_int_equal(h->config_type(&a, "a"), FUSION_CONFIG_ABSENT);
    assert_int_equal(h->config_number(&a, "a", 7.0), 7.0);
    json_decref(tree);
}

static void test_req_model(void **state)
{
    (void)state;
    const fusion_host_api *h = fh_host_api();
    assert_true(FUSION_HOST_HAS(h, req_model));
    assert_int_equal(h->abi_minor, 1);
    const char *body =
        "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    char err[256];
    fusion_request *req = fh_request_parse(body, strlen(body), err, sizeof(err));
    assert_non_null(req);
    assert_string_equal(h->req_model(req), "gpt-4o-mini");
    fh_request_free(req);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_abi10_plugin_runs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newer_minor_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_accessors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rule_pass_mark_is_the_hosts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_req_model, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_type_and_keys, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
