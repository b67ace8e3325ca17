/*
 * test_loader.c - host/loader.c: every refusal has its own code and a
 * message naming the file; a good plugin loads from a private copy and
 * closes; a pinned one is detected, loaded or refused; the cache folder
 * must be the daemon's alone.
 *
 * Each test stages the plugins it needs (built from tests/plugins/ into
 * FH_TEST_PLUGIN_DIR) into a fresh folder under /tmp with known modes, so
 * the result does not depend on the umask of the build. Single-threaded.
 */
#include "loader.h"

#include "log.h"

#include <dirent.h>
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

#include "test_fs.h"

#define NOBODY_UID 65534

typedef struct fixture {
    char root[64];          /* mkdtemp */
    char plugins[PATH_MAX]; /* root/plugins, 0755 */
    char cache[PATH_MAX];   /* root/cache, created by the loader */
    fh_loader_opts opts;
} fixture;

/* Copies FH_TEST_PLUGIN_DIR/NAME.so into the fixture's plugin folder. */
static void stage(fixture *f, const char *name, char *path, size_t len)
{
    char from[PATH_MAX];
    xsnprintf(from, sizeof(from), "%s/%s.so", FH_TEST_PLUGIN_DIR, name);
    xsnprintf(path, len, "%s/%s.so", f->plugins, name);
    copy_file(from, path, 0644);
}

static size_t count_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->root, sizeof(f->root), "/tmp/fh_loader_XXXXXX");
    assert_non_null(mkdtemp(f->root));
    assert_int_equal(chmod(f->root, 0755), 0);
    xsnprintf(f->plugins, sizeof(f->plugins), "%s/plugins", f->root);
    assert_int_equal(mkdir(f->plugins, 0755), 0);
    assert_int_equal(chmod(f->plugins, 0755), 0);
    xsnprintf(f->cache, sizeof(f->cache), "%s/cache/copies", f->root);
    f->opts.cache_dir = f->cache;
    f->opts.daemon_uid = getuid();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    remove_tree(f->root);
    free(f);
    return 0;
}

static bool all_zero(const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i])
            return false;
    return true;
}

/* Loads `path`, expects refusal `want` with a message naming the file and
 * containing `hint`, nothing mapped and no copy left behind. */
static void expect_refusal(fixture *f, const char *path, fh_load_err want, const char *hint)
{
    fh_plugin p;
    char msg[1024];
    fh_load_err err = fh_loader_open(&f->opts, path, &p, msg, sizeof(msg));
    if (err != want)
        print_error("%s: got %s, want %s: %s\n", path, fh_load_err_name(err),
                    fh_load_err_name(want), msg);
    assert_int_equal(err, want);
    assert_non_null(strstr(msg, path));
    if (hint && !strstr(msg, hint)) {
        print_error("message lacks '%s': %s\n", hint, msg);
        fail();
    }
    assert_true(all_zero(&p, sizeof(p)));
    assert_int_equal(count_files(f->cache), 0);
}

static void test_good_plugin_loads_from_private_copy(void **state)
{
    fixture *f = *state;
    char path[PATH_MAX];
    stage(f, "good_a", path, sizeof(path));
    struct stat before;
    assert_int_equal(stat(path, &before), 0);

    fh_plugin p;
    char msg[512];
    assert_int_equal(fh_loader_open(&f->opts, path, &p, msg, sizeof(msg)), FH_LOAD_OK);
    assert_non_null(p.handle);
    assert_string_equal(p.source_path, path);
    assert_string_not_equal(p.copy_path, path);
    assert_memory_equal(p.copy_path, f->cache, strlen(f->cache));
    assert_int_equal(p.source_dev, before.st_dev);
    assert_int_equal(p.source_ino, before.st_ino);

    /* The copy is a different file with the same bytes; the source is
     * untouched. The cache folder was created private. */
    struct stat copy, after, cache;
    assert_int_equal(stat(p.copy_path, &copy), 0);
    assert_true(copy.st_ino != before.st_ino || copy.st_dev != before.st_dev);
    assert_int_equal(copy.st_size, before.st_size);
    assert_int_equal(stat(path, &after), 0);
    assert_int_equal(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
    assert_int_equal(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
    assert_int_equal(after.st_mode, before.st_mode);
    assert_int_equal(stat(f->cache, &cache), 0);
    assert_int_equal(cache.st_mode & 0777, 0700);

    /* The descriptor was copied out; the hooks are the plugin's. */
    assert_int_equal(p.desc.magic, FUSION_OVERLAY_MAGIC);
    assert_int_equal(p.desc.abi_major, FUSION_ABI_MAJOR);
    assert_string_equal(p.desc.name, "good_a");
    assert_string_equal(p.desc.version, "1.0.0");
    assert_string_equal(p.desc.license, "MIT");
    assert_int_equal(p.declared_size, sizeof(fusion_overlay_descriptor));
    assert_non_null(p.desc.init);
    assert_non_null(p.desc.fini);
    assert_non_null(p.desc.match);
    assert_non_null(p.desc.apply);
    assert_non_null(p.desc.evaluate);
    void *state_ptr = NULL;
    fusion_init_args args = {.size = sizeof(args), .config_json = "{}", .config_len = 2};
    assert_int_equal(p.desc.init(&args, &state_ptr), 0);
    assert_true(p.desc.match(state_ptr, NULL, NULL) > 0.09);
    p.desc.fini(state_ptr);

    /* Two loads of one file are two mappings. */
    fh_plugin q;
    assert_int_equal(fh_loader_open(&f->opts, path, &q, msg, sizeof(msg)), FH_LOAD_OK);
    assert_ptr_not_equal(q.handle, p.handle);
    assert_string_not_equal(q.copy_path, p.copy_path);
    assert_true(fh_loader_close(&q));

    char copy_path[PATH_MAX];
    xsnprintf(copy_path, sizeof(copy_path), "%s", p.copy_path);
    assert_true(fh_loader_close(&p));
    assert_true(all_zero(&p, sizeof(p)));
    assert_int_equal(access(copy_path, F_OK), -1); /* the copy is gone */
    assert_int_equal(access(path, F_OK), 0);       /* the source is not */
    assert_null(dlopen(copy_path, RTLD_LAZY | RTLD_NOLOAD));
}

static void test_relative_path_is_made_absolute(void **state)
{
    fixture *f = *state;
    char path[PATH_MAX], cwd[PATH_MAX];
    stage(f, "good_b", path, sizeof(path));
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(f->plugins), 0);
    fh_plugin p;
    char msg[512];
    fh_load_err err = fh_loader_open(&f->opts, "good_b.so", &p, msg, sizeof(msg));
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(err, FH_LOAD_OK);
    assert_string_equal(p.source_path, path);
    assert_null(p.desc.match); /* optional hook left NULL */
    assert_true(fh_loader_close(&p));
}

static void test_descriptor_refusals(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *plugin;
        fh_load_err err;
        const char *hint;
    } cases[] = {
        {"bad_no_entry", FH_LOAD_NO_ENTRY, "nm -D bad_no_entry.so"},
        {"bad_null_desc", FH_LOAD_NULL_DESCRIPTOR, "FUSION_OVERLAY_DEFINE"},
        {"bad_magic", FH_LOAD_BAD_MAGIC, "0x12345678"},
        {"bad_major", FH_LOAD_ABI_MAJOR, "ABI 2.0"},
        {"bad_minor", FH_LOAD_ABI_MINOR, "upgrade fusion-host"},
        {"bad_small", FH_LOAD_TOO_SMALL, "FUSION_OVERLAY_DEFINE"},
        {"bad_hook", FH_LOAD_MISSING_HOOK, "missing: evaluate;"},
        {"bad_name", FH_LOAD_BAD_NAME, "'Bad-Name'"},
        {"bad_version", FH_LOAD_BAD_VERSION, "'1.0'"},
        {"bad_undefined", FH_LOAD_DLOPEN, "ldd bad_undefined.so"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char path[PATH_MAX];
        stage(f, cases[i].plugin, path, sizeof(path));
        expect_refusal(f, path, cases[i].err, cases[i].hint);
    }
}

static void test_dlopen_error_quotes_dlerror(void **state)
{
    fixture *f = *state;
    char path[PATH_MAX];
    stage(f, "bad_undefined", path, sizeof(path));
    expect_refusal(f, path, FH_LOAD_DLOPEN, "tp_symbol_nobody_defines");
}

static void test_not_elf(void **state)
{
    fixture *f = *state;
    char path[PATH_MAX];
    xsnprintf(path, sizeof(path), "%s/x.so", f->plugins);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("this is not a shared object\n", fp);
    fclose(fp);
    assert_int_equal(chmod(path, 0644), 0);
    expect_refusal(f, path, FH_LOAD_NOT_ELF, "not an ELF file");

    /* An empty file. */
    xsnprintf(path, sizeof(path), "%s/empty.so", f->plugins);
    fp = fopen(path, "w");
    assert_non_null(fp);
    fclose(fp);
    assert_int_equal(chmod(path, 0644), 0);
    expect_refusal(f, path, FH_LOAD_NOT_ELF, NULL);

    /* ELF, but a relocatable object rather than a shared one. */
    Elf64_Ehdr eh;
    memset(&eh, 0, sizeof(eh));
    memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    eh.e_type = ET_REL;
    xsnprintf(path, sizeof(path), "%s/obj.so", f->plugins);
    fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite(&eh, sizeof(eh), 1, fp), 1);
    fclose(fp);
    assert_int_equal(chmod(path, 0644), 0);
    expect_refusal(f, path, FH_LOAD_NOT_ELF, "not a shared object");
}

static void test_io_errors(void **state)
{
    fixture *f = *state;
    char path[PATH_MAX];
    xsnprintf(path, sizeof(path), "%s/missing.so", f->plugins);
    expect_refusal(f, path, FH_LOAD_IO, "No such file");
    xsnprintf(path, sizeof(path), "%s/dir.so", f->plugins);
    assert_int_equal(mkdir(path, 0755), 0);
    expect_refusal(f, path, FH_LOAD_IO, "not a regular file");
}

static void test_unsafe_permissions(void **state)
{
    fixture *f = *state;
    char path[PATH_MAX];
    stage(f, "good_a", path, sizeof(path));
    assert_int_equal(chmod(path, 0664), 0);
    expect_refusal(f, path, FH_LOAD_UNSAFE_PERMS, "chmod go-w");
    assert_int_equal(chmod(path, 0646), 0);
    expect_refusal(f, path, FH_LOAD_UNSAFE_PERMS, "writable by others");
    assert_int_equal(chmod(path, 0644), 0);

    /* The folder counts too. */
    assert_int_equal(chmod(f->plugins, 0775), 0);
    expect_refusal(f, path, FH_LOAD_UNSAFE_PERMS, "its folder");
    assert_int_equal(chmod(f->plugins, 0757), 0);
    expect_refusal(f, path, FH_LOAD_UNSAFE_PERMS, "its folder");
    assert_int_equal(chmod(f->plugins, 0755), 0);

    /* And so does the cache folder the private copy goes to. */
    char parent[PATH_MAX];
    xsnprintf(parent, sizeof(parent), "%s/cache", f->root);
    assert_int_equal(mkdir(parent, 0700) == 0 || errno == EEXIST, 1);
    assert_int_equal(mkdir(f->cache, 0700) == 0 || errno == EEXIST, 1);
    assert_int_equal(chmod(f->cache, 0777), 0);
    expect_refusal(f, path, FH_LOAD_UNSAFE_PERMS, "cache folder");
    assert_int_equal(chmod(f->cache, 0700), 0);

    fh_plugin p;
    char msg[512];
    assert_int_equal(fh_loader_open(&f->opts, path, &p, msg, sizeof(msg)), FH_LOAD_OK);
    assert_true(fh_loader_close(&p));
}

/* A symlink in the plugin folder is followed; its target and the target's
 * folder are held to the plugin folder's rules. */
static void test_symlink_target_is_checked(void **state)
{
    fixture *f = *state;
    char elsewhere[PATH_MAX], target[PATH_MAX], link[PATH_MAX];
    xsnprintf(elsewhere, sizeof(elsewhere), "%s/elsewhere", f->root);
    assert_int_equal(mkdir(elsewhere, 0755), 0);
    assert_int_equal(chmod(elsewhere, 0755), 0);
    char from[PATH_MAX];
    xsnprintf(from, sizeof(from), "%s/good_a.so", FH_TEST_PLUGIN_DIR);
    xsnprintf(target, sizeof(target), "%s/good_a.so", elsewhere);
    copy_file(from, target, 0644);
    xsnprintf(link, sizeof(link), "%s/good_a.so", f->plugins);
    assert_int_equal(symlink(target, link), 0);

    fh_plugin p;
    char msg[1024];
    assert_int_equal(fh_loader_open(&f->opts, link, &p, msg, sizeof(msg)), FH_LOAD_OK);
    assert_string_equal(p.source_path, link); /* reported under the operator's name */
    assert_true(fh_loader_close(&p));

    /* The target's folder writable by others: anyone could swap the code. */
    assert_int_equal(chmod(elsewhere, 0777), 0);
    expect_refusal(f, link, FH_LOAD_UNSAFE_PERMS, "symlink target");
    assert_int_equal(chmod(elsewhere, 0755), 0);
    /* The target itself writable by its group. */
    assert_int_equal(chmod(target, 0664), 0);
    expect_refusal(f, link, FH_LOAD_UNSAFE_PERMS, "chmod go-w");
    assert_int_equal(chmod(target, 0644), 0);
    /* A dangling link. */
    assert_int_equal(unlink(target), 0);
    expect_refusal(f, link, FH_LOAD_IO, "cannot open");
}

static void test_owner(void **state)
{
    fixture *f = *state;
    if (geteuid() != 0) {
        print_message("[  SKIPPED ] owner checks need root to chown files to nobody\n");
        skip();
    }
    char path[PATH_MAX];
    stage(f, "good_a", path, sizeof(path));
    f->opts.daemon_uid = 0;
    assert_int_equal(chown(path, NOBODY_UID, (gid_t)-1), 0);
    expect_refusal(f, path, FH_LOAD_BAD_OWNER, "uid 65534");

    fh_plugin p;
    char msg[512];
    /* ... but the daemon's own user may own it ... */
    f->opts.daemon_uid = NOBODY_UID;
    assert_int_equal(fh_loader_open(&f->opts, path, &p, msg, sizeof(msg)), FH_LOAD_OK);
    assert_true(fh_loader_close(&p));
    /* ... and plugin-test on an author's tree skips it. */
    f->opts.daemon_uid = 0;
    f->opts.skip_owner_checks = true;
    assert_int_equal(fh_loader_open(&f->opts, path, &p, msg, sizeof(msg)), FH_LOAD_OK);
    assert_true(fh_loader_close(&p));
    f->opts.skip_owner_checks = false;

    /* A folder owned by someone else. */
    assert_int_equal(chown(path, 0, (gid_t)-1), 0);
    assert_int_equal(chown(f->plugins, NOBODY_UID, (gid_t)-1), 0);
    expect_refusal(f, path, FH_LOAD_BAD_OWNER, "its folder");
    assert_int_equal(chown(f->plugins, 0, (gid_t)-1), 0);
}

/* Makes root/cache and the cache folder itself, mode 0700 whatever the
 * umask, as the loader would. */
static void make_cache(fixture *f)
{
    char parent[PATH_MAX];
    xsnprintf(parent, sizeof(parent), "%s/cache", f->root);
    assert_int_equal(mkdir(parent, 0700) == 0 || errno == EEXIST, 1);
    assert_int_equal(mkdir(f->cache, 0700) == 0 || errno == EEXIST, 1);
    assert_int_equal(chmod(f->cache, 0700), 0);
}

/* Whoever owns or can write the cache folder can swap the private copy
 * between the write and dlopen(), so the folder must be the daemon's alone:
 * owned by its effective user, no group/other write, not a symlink. */
static void test_cache_folder_must_be_private(void **state)
{
    fixture *f = *state;
    char path[PATH_MAX];
    stage(f, "good_a", path, sizeof(path));
    make_cache(f);

    assert_int_equal(chmod(f->cache, 0770), 0);
    expect_refusal(f, path, FH_LOAD_UNSAFE_PERMS, "writable by its group");
    assert_int_equal(chmod(f->cache, 0720), 0);
    expect_refusal(f, path, FH_LOAD_UNSAFE_PERMS, "chmod 700");
    assert_int_equal(chmod(f->cache, 0700), 0);

    /* A symlink to a private folder: whoever can change the link chooses. */
    char real[PATH_MAX];
    xsnprintf(real, sizeof(real), "%s/real_cache", f->root);
    assert_int_equal(mkdir(real, 0700), 0);
    assert_int_equal(rmdir(f->cache), 0);
    assert_int_equal(symlink(real, f->cache), 0);
    expect_refusal(f, path, FH_LOAD_UNSAFE_PERMS, "symbolic link");
    assert_int_equal(count_files(real), 0);
    assert_int_equal(unlink(f->cache), 0);
    make_cache(f);

    if (geteuid() != 0) {
        print_message("[  SKIPPED ] cache folder owned by another user: needs root to chown it "
                      "to nobody\n");
    } else {
        /* Owned by nobody, mode 0700: only its owner could swap the copy,
         * and that owner is not the daemon. */
        assert_int_equal(chown(f->cache, NOBODY_UID, (gid_t)-1), 0);
        expect_refusal(f, path, FH_LOAD_UNSAFE_PERMS, "owned by uid 65534");
        assert_int_equal(chown(f->cache, 0, (gid_t)-1), 0);
    }

    /* The private folder works, and the copy in it is read-only. */
    fh_plugin p;
    char msg[512];
    assert_int_equal(fh_loader_open(&f->opts, path, &p, msg, sizeof(msg)), FH_LOAD_OK);
    struct stat copy;
    assert_int_equal(stat(p.copy_path, &copy), 0);
    assert_int_equal(copy.st_mode & 0777, 0500);
    assert_int_equal(copy.st_uid, geteuid());
    assert_true(fh_loader_close(&p));
}

/* A refused library the dynamic loader will not unmap (here it pinned
 * itself with RTLD_NODELETE from its entry function) is reported. */
static void test_refused_pinned_library_is_reported(void **state)
{
    fixture *f = *state;
    char path[PATH_MAX];
    stage(f, "bad_nodelete", path, sizeof(path));
    expect_refusal(f, path, FH_LOAD_BAD_VERSION, "kept the refused library mapped");
}

/* The refused library's destructors run attributed to its file in the log,
 * like a loaded one's are to its overlay. */
static char probe_overlay[128];
static int probe_calls;

static void dtor_probe(void)
{
    const char *cur = fh_log_current_overlay();
    snprintf(probe_overlay, sizeof(probe_overlay), "%s", cur ? cur : "(none)");
    probe_calls++;
}

static void test_refused_library_is_closed_attributed(void **state)
{
    fixture *f = *state;
    char path[PATH_MAX], hex[32];
    stage(f, "bad_dtor_probe", path, sizeof(path));
    xsnprintf(hex, sizeof(hex), "%jx", (uintmax_t)(uintptr_t)&dtor_probe);
    assert_int_equal(setenv("TP_DTOR_PROBE", hex, 1), 0);
    probe_calls = 0;
    expect_refusal(f, path, FH_LOAD_BAD_MAGIC, "0x12345678");
    unsetenv("TP_DTOR_PROBE");
    assert_int_equal(probe_calls, 1);
    assert_string_equal(probe_overlay, "bad_dtor_probe.so");
    assert_null(fh_log_current_overlay()); /* restored afterwards */
}

static void test_older_size_still_loads(void **state)
{
    fixture *f = *state;
    char path[PATH_MAX];
    stage(f, "exact_size", path, sizeof(path));
    fh_plugin p;
    char msg[512];
    assert_int_equal(fh_loader_open(&f->opts, path, &p, msg, sizeof(msg)), FH_LOAD_OK);
    assert_int_equal(p.declared_size,
                     offsetof(fusion_overlay_descriptor, evaluate) + sizeof(p.desc.evaluate));
    assert_string_equal(p.desc.version, "1.0.0-rc.1");
    assert_non_null(p.desc.evaluate);
    assert_true(fh_loader_close(&p));
}

static void test_pinned_library_is_detected(void **state)
{
    fixture *f = *state;
    char path[PATH_MAX];
    stage(f, "pinned", path, sizeof(path));
    fh_plugin p;
    char msg[512];
    assert_int_equal(fh_loader_open(&f->opts, path, &p, msg, sizeof(msg)), FH_LOAD_OK);
    char copy_path[PATH_MAX];
    xsnprintf(copy_path, sizeof(copy_path), "%s", p.copy_path);
    assert_false(fh_loader_close(&p));
    assert_int_equal(access(copy_path, F_OK), -1); /* the name is gone anyway */
}

/* A library already mapped under the name the next private copy will get:
 * dlopen would hand back the old code, so the loader must refuse. */
static void test_stale_copy(void **state)
{
    fixture *f = *state;
    char path[PATH_MAX];
    stage(f, "good_a", path, sizeof(path));
    fh_plugin p;
    char msg[512];
    assert_int_equal(fh_loader_open(&f->opts, path, &p, msg, sizeof(msg)), FH_LOAD_OK);
    /* Copies are named STEM-PID-SEQ.so; predict the next one. */
    const char *dash = strrchr(p.copy_path, '-');
    assert_non_null(dash);
    unsigned long seq = strtoul(dash + 1, NULL, 10);
    char next[PATH_MAX];
    xsnprintf(next, sizeof(next), "%s/good_a-%ld-%lu.so", f->cache, (long)getpid(), seq + 1);
    assert_true(fh_loader_close(&p));

    copy_file(path, next, 0600);
    void *squatter = dlopen(next, RTLD_NOW | RTLD_LOCAL);
    assert_non_null(squatter);
    fh_load_err err = fh_loader_open(&f->opts, path, &p, msg, sizeof(msg));
    assert_int_equal(err, FH_LOAD_STALE_COPY);
    assert_non_null(strstr(msg, path));
    assert_non_null(strstr(msg, "already mapped"));
    assert_true(all_zero(&p, sizeof(p)));
    assert_int_equal(access(next, F_OK), -1);
    dlclose(squatter);
    assert_int_equal(count_files(f->cache), 0);
}

/* A constructor that never returns: the load times out, names the file and
 * the deadline, and from then on the loader refuses everything (dlopen would
 * queue behind the dynamic loader's lock the stuck thread holds). Runs in a
 * child that ends with _exit(): exit() would wait on that lock too. */
static void test_hung_constructor_wedges_the_loader(void **state)
{
    fixture *f = *state;
    char hang[PATH_MAX], good[PATH_MAX];
    stage(f, "hang_ctor", hang, sizeof(hang));
    stage(f, "good_a", good, sizeof(good));
    f->opts.deadline_ms = 200;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(10); /* a loader that does not refuse blocks in dlopen for ever */
        fh_plugin p;
        char msg[1024];
        int code = 0;
        if (fh_loader_wedged())
            code = 10;
        else if (fh_loader_open(&f->opts, hang, &p, msg, sizeof(msg)) != FH_LOAD_TIMEOUT)
            code = 11;
        else if (!strstr(msg, hang) || !strstr(msg, "200 ms") || !strstr(msg, "restart"))
            code = 12;
        else if (!fh_loader_wedged())
            code = 13;
        else if (fh_loader_open(&f->opts, good, &p, msg, sizeof(msg)) != FH_LOAD_TIMEOUT)
            code = 14;
        else if (!strstr(msg, good) || !strstr(msg, "restart"))
            code = 15;
        if (code)
            fprintf(stderr, "hung constructor: check %d failed: %s\n", code, msg);
        _exit(code);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_error_names_are_distinct(void **state)
{
    (void)state;
    for (int i = 0; i < FH_LOAD_ERR_COUNT; i++) {
        const char *a = fh_load_err_name((fh_load_err)i);
        assert_string_not_equal(a, "unknown");
        for (int j = i + 1; j < FH_LOAD_ERR_COUNT; j++)
            assert_string_not_equal(a, fh_load_err_name((fh_load_err)j));
    }
    assert_string_equal(fh_load_err_name(FH_LOAD_ERR_COUNT), "unknown");
    assert_string_equal(fh_load_err_name(FH_LOAD_NO_ENTRY), "no_entry");
}

static void test_name_and_version_rules(void **state)
{
    (void)state;
    assert_true(fh_overlay_name_valid("refund_lot_switch"));
    assert_true(fh_overlay_name_valid("a"));
    assert_true(fh_overlay_name_valid("a1_2"));
    assert_false(fh_overlay_name_valid(NULL));
    assert_false(fh_overlay_name_valid(""));
    assert_false(fh_overlay_name_valid("1abc"));
    assert_false(fh_overlay_name_valid("_abc"));
    assert_false(fh_overlay_name_valid("Abc"));
    assert_false(fh_overlay_name_valid("a-b"));
    assert_false(fh_overlay_name_valid("a b"));
    char longname[FUSION_NAME_MAX + 2];
    memset(longname, 'a', sizeof(longname));
    longname[FUSION_NAME_MAX] = '\0';
    assert_true(fh_overlay_name_valid(longname));
    longname[FUSION_NAME_MAX] = 'a';
    longname[FUSION_NAME_MAX + 1] = '\0';
    assert_false(fh_overlay_name_valid(longname));

    static const char *const good[] = {"0.0.0",        "1.2.3",         "10.20.30",
                                       "1.0.0-alpha",  "1.0.0-alpha.1", "1.0.0-0.3.7",
                                       "1.0.0-x-y.z.9"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_true(fh_overlay_version_valid(good[i]));
    static const char *const bad[] = {"",         "1",       "1.0",    "1.0.0.0", "01.0.0",
                                      "1.01.0",   "1.0.01",  "v1.0.0", "1.0.0-",  "1.0.0-a..b",
                                      "1.0.0-01", "1.0.0+b", "1.a.0",  " 1.0.0",  "1.0.0 "};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(fh_overlay_version_valid(bad[i]));
    assert_false(fh_overlay_version_valid(NULL));
    char longver[FUSION_VERSION_MAX + 2];
    memset(longver, 'a', sizeof(longver));
    memcpy(longver, "1.0.0-", 6);
    longver[FUSION_VERSION_MAX] = '\0';
    assert_true(fh_overlay_version_valid(longver));
    longver[FUSION_VERSION_MAX] = 'a';
    longver[FUSION_VERSION_MAX + 1] = '\0';
    assert_false(fh_overlay_version_valid(longver));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_good_plugin_loads_from_private_copy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relative_path_is_made_absolute, setup, teardown),
        cmocka_unit_test_setup_teardown(test_descriptor_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dlopen_error_quotes_dlerror, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_elf, setup, teardown),
        cmocka_unit_test_setup_teardown(test_io_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unsafe_permissions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_symlink_target_is_checked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_folder_must_be_private, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_pinned_library_is_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_library_is_closed_attributed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_older_size_still_loads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pinned_library_is_detected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_copy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hung_constructor_wedges_the_loader, setup, teardown),
        cmocka_unit_test(test_error_names_are_distinct),
        cmocka_unit_test(test_name_and_version_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
