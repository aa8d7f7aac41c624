//! include/resmon.h compiles, strictly, in C and C++, and a plugin written
//! against it builds as a shared library exporting `resmon_startup`.

use std::io::Write;
use std::process::{Command, Stdio};

const PLUGIN: &str = r#"
#include "resmon.h"
#include <string.h>

static const struct resmon_callbacks *cb;

static void *p_open(const char *name, const char *params, void *handle) { (void)name; (void)params; return handle; }
static void p_close(void *r) { (void)r; }
static int32_t p_online(void *r) { cb->set_status(r, RESMON_STATE_ONLINE, 1); return RESMON_OK; }
static int32_t p_offline(void *r) { (void)r; return RESMON_OK; }
static void p_terminate(void *r) { (void)r; }
static int32_t p_alive(void *r) { return !cb->should_terminate(r); }
static int32_t p_control(void *r, uint32_t code, const uint8_t *in, size_t in_len,
                         uint8_t *out, size_t out_len, size_t *written) {
    (void)r; (void)in; (void)in_len;
    if (code != 4) return RESMON_INVALID_FUNCTION;
    *written = 2;
    if (out_len < 2) return RESMON_MORE_DATA;
    memcpy(out, "{}", 2);
    return RESMON_OK;
}
static int32_t p_type_control(const char *t, uint32_t code, const uint8_t *in, size_t in_len,
                              uint8_t *out, size_t out_len, size_t *written) {
    (void)t; (void)code; (void)in; (void)in_len; (void)out; (void)out_len; (void)written;
    return RESMON_INVALID_FUNCTION;
}

static const struct resmon_function_table table = {
    sizeof(struct resmon_function_table), RESMON_ABI_VERSION,
    p_open, p_close, p_online, p_offline, p_terminate, p_alive, p_alive,
    p_control, p_type_control,
};

const struct resmon_function_table *resmon_startup(const char *type_name, uint32_t min_version,
                                                   uint32_t max_version,
                                                   const struct resmon_callbacks *callbacks) {
    if (strcmp(type_name, "test") != 0 || min_version > RESMON_ABI_VERSION
        || max_version < RESMON_ABI_VERSION)
        return NULL;
    cb = callbacks;
    return &table;
}
"#;

fn include_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include")
}

#[test]
fn the_header_compiles_strictly_in_c_and_cxx() {
    for (compiler, lang, std) in [("cc", "c", "-std=c11"), ("c++", "c++", "-std=c++17")] {
        let mut child = Command::new(compiler)
            .args([
                "-fsyntax-only",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                std,
                "-x",
                lang,
                "-I",
            ])
            .arg(include_dir())
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{compiler}: {e} (scripts/test installs gcc and g++)"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"#include \"resmon.h\"\nint main(void) { return RESMON_OK; }\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{compiler}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_plugin_against_the_header_builds_and_exports_resmon_startup() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("plugin.c");
    std::fs::write(&src, PLUGIN).unwrap();
    let lib = dir.path().join("libtest.so");
    let out = Command::new("cc")
        .args([
            "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-std=c11", "-o",
        ])
        .arg(&lib)
        .arg(&src)
        .arg("-I")
        .arg(include_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nm = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .unwrap();
    let symbols = String::from_utf8_lossy(&nm.stdout);
    assert!(symbols.contains(" T resmon_startup"), "{symbols}");
}
