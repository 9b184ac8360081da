//! The `bwrap` sandbox as a boundary, through the real binary on a real busybox root
//! file system: what a step or test sees (only its inputs, its own `/tmp`, the host's
//! resolver with network `host`), and attacks that must fail inside the sandbox and leave
//! the host untouched. Clean-up and packing never leave their folder.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

const BUSYBOX_TOOLS: &[&str] = &["/usr/bin/bwrap", "/bin/busybox"];

/// A project with a real busybox root as source `busybox`, `sandbox` as the local
/// provider's sandbox, `body` after that, and `files` written.
fn project(sandbox: &str, body: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("project");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(
        repo_root().join("examples/busybox-bwrap/make-root.sh"),
        dir.join("make-root.sh"),
    )
    .expect("copy make-root.sh");
    let made = std::process::Command::new("sh")
        .arg(dir.join("make-root.sh"))
        .output()
        .expect("run make-root.sh");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = format!(
        "provider \"local\" {{ sandbox \"{sandbox}\"; }}\nsource \"busybox\" {{ local \"bases/busybox-root\"; }}\n{body}"
    );
    write(&dir.join("imgraph.kdl"), &config);
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        write(&p, text);
    }
    (tmp, dir)
}

/// Runs `imgraph apply`; returns (exit code, stdout and stderr).
fn apply(dir: &Path) -> (i32, String) {
    let out = imgraph(dir).arg("apply").output().expect("run imgraph");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The log of `node` in the latest run.
fn node_log(dir: &Path, node: &str) -> String {
    let logs = dir.join(".imgraph/logs");
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&logs)
        .expect("logs folder")
        .map(|e| e.expect("entry").path())
        .collect();
    runs.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("run-"))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    });
    let file = node.replace([':', '/', '@'], "_");
    let run = runs.last().expect("a run");
    std::fs::read_to_string(run.join(format!("{file}.log"))).unwrap_or_default()
}

/// Unpacks the newest version of `image` into a fresh folder; returns (folder, root).
fn unpack_newest(dir: &Path, image: &str) -> (tempfile::TempDir, PathBuf) {
    let ws = imgraph::workspace::Workspace::open(dir).expect("open workspace");
    let newest = ws
        .state
        .images(Some(image))
        .expect("images")
        .into_iter()
        .last()
        .expect("a version");
    let out = tempfile::tempdir().expect("tempdir");
    let root = out.path().join("root");
    ws.local_store()
        .expect("store")
        .unpack(&newest.version.artifact_id, &root, &Default::default())
        .expect("unpack");
    (out, root)
}

fn leftovers(dir: &Path) -> Vec<String> {
    tmp_leftovers(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// A build whose only step is `command`, with `scripts/` as its input.
fn one_step(command: &str) -> String {
    format!(
        "image \"box\" {{\n    from \"busybox\"\n    build \"rootfs\" {{ run \"{command}\"; }}\n    input \"scripts\"\n}}\n"
    )
}

const SCRIPT: (&str, &str) = ("scripts/provision.sh", "echo provisioned\n");

// ---- what a command sees ------------------------------------------------------------

#[test]
fn a_step_that_reads_an_undeclared_project_file_fails_naming_it() {
    if !require_tools(BUSYBOX_TOOLS) {
        return;
    }
    // The script is declared; the file it reads is named nowhere in the config.
    let (_t, dir) = project(
        "bwrap",
        &one_step("sh scripts/provision.sh"),
        &[
            (
                "scripts/provision.sh",
                "echo provisioned\ncat extra/settings.conf\n",
            ),
            ("extra/settings.conf", "undeclared\n"),
        ],
    );
    let (code, out) = apply(&dir);
    assert_eq!(code, 3, "{out}");
    // The declared script ran; the undeclared file was not there, and the output says so.
    assert!(out.contains("provisioned"), "{out}");
    assert!(out.contains("extra/settings.conf"), "{out}");
    assert!(out.contains("No such file or directory"), "{out}");
    assert!(out.contains("must be declared with `input`"), "{out}");
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn a_step_sees_exactly_its_inputs_read_only() {
    if !require_tools(BUSYBOX_TOOLS) {
        return;
    }
    let (_t, dir) = project(
        "bwrap",
        &one_step("find . | sort > /etc/seen; touch scripts/new 2>/etc/touch-error; true"),
        &[
            SCRIPT,
            ("scripts/lib/common.sh", "x=1\n"),
            ("other/secret.txt", "no\n"),
        ],
    );
    let (code, out) = apply(&dir);
    assert_eq!(code, 0, "{out}");
    let (_u, root) = unpack_newest(&dir, "box");
    let seen = std::fs::read_to_string(root.join("etc/seen")).unwrap();
    assert_eq!(
        seen,
        ".\n./scripts\n./scripts/lib\n./scripts/lib/common.sh\n./scripts/provision.sh\n"
    );
    let error = std::fs::read_to_string(root.join("etc/touch-error")).unwrap();
    assert!(error.contains("Read-only file system"), "{error}");
    assert!(!dir.join("scripts/new").exists());
    // Nothing of the sandbox's mounts is packed.
    assert!(!root.join("tmp/imgraph-project").exists());
    for mount in ["run", "sys", "etc/resolv.conf"] {
        assert!(!root.join(mount).exists(), "{mount} was packed");
    }
}

#[test]
fn tmp_persists_across_steps_and_is_emptied_before_packing() {
    if !require_tools(BUSYBOX_TOOLS) {
        return;
    }
    let body = "image \"box\" {\n    from \"busybox\"\n    build \"rootfs\" {\n        copy \"files/app.conf\" to=\"/tmp/upload/app.conf\"\n        run \"mkdir -p /etc/app && cp /tmp/upload/app.conf /etc/app/ && echo scratch > /tmp/scratch\"\n        run \"test -f /tmp/scratch && cat /etc/resolv.conf > /etc/app/resolver-seen && ls /proc/self/ /dev/null /sys/kernel /run > /dev/null\"\n    }\n}\n";
    let (_t, dir) = project("bwrap", body, &[("files/app.conf", "port=80\n")]);
    let (code, out) = apply(&dir);
    assert_eq!(code, 0, "{out}");
    let (_u, root) = unpack_newest(&dir, "box");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/app/app.conf")).unwrap(),
        "port=80\n"
    );
    // The host's resolver configuration was visible during the step, and is not packed.
    assert_eq!(
        std::fs::read_to_string(root.join("etc/app/resolver-seen")).unwrap(),
        std::fs::read_to_string("/etc/resolv.conf").unwrap()
    );
    assert!(!root.join("etc/resolv.conf").exists());
    // /tmp stays, with its mode, and empty.
    let tmp = std::fs::metadata(root.join("tmp")).unwrap();
    assert_eq!(tmp.mode() & 0o7777, 0o1777);
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
}

#[test]
fn tests_have_no_network_and_builds_have_the_hosts() {
    if !require_tools(BUSYBOX_TOOLS) {
        return;
    }
    let body = "image \"box\" {\n    from \"busybox\"\n    build \"rootfs\" { run \"cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' | sort > /etc/build-net\"; }\n    test \"net\" {\n        input \"tests\"\n        run \"sh tests/net.sh\"\n    }\n}\nimage \"offline\" {\n    from \"busybox\"\n    build \"rootfs\" { network \"none\"; run \"sh tests/net.sh\"; }\n    input \"tests\"\n}\n";
    let (_t, dir) = project(
        "bwrap",
        body,
        &[(
            "tests/net.sh",
            "set -eu\nnets=$(cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ')\necho \"interfaces: $nets\"\n[ \"$nets\" = lo ]\n[ ! -e /etc/resolv.conf ]\n",
        )],
    );
    let (code, out) = apply(&dir);
    assert_eq!(code, 0, "{out}");
    let (_u, root) = unpack_newest(&dir, "box");
    let build_net = std::fs::read_to_string(root.join("etc/build-net")).unwrap();
    let host_net: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap_or("").trim().to_string())
        .collect();
    for name in &host_net {
        assert!(build_net.lines().any(|l| l == name), "{build_net}");
    }
    assert!(node_log(&dir, "test:box/net").contains("interfaces: lo"));
    assert!(node_log(&dir, "build:offline").contains("interfaces: lo"));
}

#[test]
fn commands_see_their_declared_names_and_nothing_else_of_the_callers_environment() {
    if !require_tools(BUSYBOX_TOOLS) {
        return;
    }
    // Each command writes the variables it sees; the build into the image, the test and
    // the delivery into their logs.
    let body = "image \"box\" {\n    from \"busybox\"\n    env \"APP_FLAVOR\"\n    build \"rootfs\" {\n        pass-env \"BUILD_TOKEN\"\n        run \"env | sort > /etc/build-env\"\n    }\n    probe \"flavor\" run=\"env | grep -c PROBE_ONLY || true\" { pass-env \"PROBE_ONLY\"; }\n    test \"env\" {\n        pass-env \"TEST_TOKEN\"\n        run \"env | sort\"\n    }\n}\nenvironment \"staging\" {\n    deliver \"box\" { pass-env \"DEPLOY_TOKEN\"; run \"env | sort\"; }\n}\n";
    let (_t, dir) = project("bwrap", body, &[]);
    let out = imgraph(&dir)
        .arg("apply")
        .env("APP_FLAVOR", "blue")
        .env("BUILD_TOKEN", "b-secret")
        .env("TEST_TOKEN", "t-secret")
        .env("DEPLOY_TOKEN", "d-secret")
        .env("PROBE_ONLY", "p")
        .env("UNDECLARED_SECRET", "hunter2")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let (_u, root) = unpack_newest(&dir, "box");
    let build = std::fs::read_to_string(root.join("etc/build-env")).unwrap();
    let test = node_log(&dir, "test:box/env");
    let deliver = node_log(&dir, "deliver:box@staging");
    for (what, seen, wanted, unwanted) in [
        (
            "build",
            &build,
            &["APP_FLAVOR=blue", "BUILD_TOKEN=b-secret"][..],
            &["TEST_TOKEN", "DEPLOY_TOKEN", "PROBE_ONLY"][..],
        ),
        (
            "test",
            &test,
            &["APP_FLAVOR=blue", "TEST_TOKEN=t-secret"][..],
            &["BUILD_TOKEN", "DEPLOY_TOKEN", "PROBE_ONLY"][..],
        ),
        (
            "delivery",
            &deliver,
            &[
                "APP_FLAVOR=blue",
                "DEPLOY_TOKEN=d-secret",
                "IMGRAPH_ENVIRONMENT=staging",
            ][..],
            &["BUILD_TOKEN", "TEST_TOKEN", "PROBE_ONLY"][..],
        ),
    ] {
        for w in wanted {
            assert!(seen.lines().any(|l| l == *w), "{what} lacks {w}: {seen}");
        }
        for u in unwanted.iter().chain(&["UNDECLARED_SECRET"]) {
            assert!(!seen.contains(u), "{what} sees {u}: {seen}");
        }
        assert!(
            seen.contains("SOURCE_DATE_EPOCH=315532800"),
            "{what}: {seen}"
        );
    }
    // The probe saw its own name: without PROBE_ONLY its output changes.
    let plan = imgraph(&dir)
        .arg("plan")
        .env("APP_FLAVOR", "blue")
        .output()
        .unwrap();
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan_text.contains("probe `flavor` output changed"),
        "{plan_text}"
    );
}

#[test]
fn package_managers_and_account_tools_work_as_root_inside_the_sandbox() {
    let Some(origin) = debian_origin() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("project");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&origin, dir.join("origin.tar.zst")).unwrap();
    // apt drops to `_apt` (setgroups, setuid) to download; dpkg and useradd chown; su
    // switches user; the test runs without network and sees no resolver.
    let body = "image \"deb\" {\n    from \"debian\"\n    build \"rootfs\" {\n        run \"apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends hello\"\n        run \"useradd -m -s /bin/sh app && install -d -o app -g app /srv/app && su app -c 'touch /srv/app/owned' && hello > /etc/greeting\"\n    }\n    test \"inside\" { run \"hello && [ $(stat -c %U /srv/app/owned) = app ] && ! getent hosts deb.debian.org\"; }\n}\n";
    write(
        &dir.join("imgraph.kdl"),
        &format!(
            "provider \"local\" {{ sandbox \"bwrap\"; }}\nsource \"debian\" {{ local \"origin.tar.zst\"; }}\n{body}"
        ),
    );
    let (code, out) = apply(&dir);
    assert_eq!(code, 0, "{out}");
    let build = node_log(&dir, "build:deb");
    assert!(!build.contains("setgroups"), "{build}");
    assert!(build.contains("Setting up hello"), "{build}");
    let (_u, root) = unpack_newest(&dir, "deb");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/greeting")).unwrap(),
        "Hello, world!\n"
    );
    let owned = std::fs::metadata(root.join("srv/app/owned")).unwrap();
    assert_eq!(owned.uid(), 1000);
    // Mount points are there, empty; the image's /tmp is empty.
    for mount in ["proc", "sys", "dev", "tmp"] {
        let entries = std::fs::read_dir(root.join(mount)).unwrap().count();
        assert_eq!(entries, 0, "/{mount} has {entries} entries");
    }
}

// ---- attacks: each fails inside the sandbox and leaves the host untouched --------------

#[test]
fn attack_remounting_the_inputs_read_write_fails_and_the_project_is_untouched() {
    if !require_tools(BUSYBOX_TOOLS) {
        return;
    }
    for attack in [
        "mount -o remount,rw /tmp/imgraph-project && echo pwned > scripts/provision.sh",
        "mount -o remount,rw,bind /tmp/imgraph-project/scripts/provision.sh && echo pwned > scripts/provision.sh",
        "unshare -r -m sh -c 'mount -o remount,rw,bind /tmp/imgraph-project/scripts/provision.sh && echo pwned > scripts/provision.sh'",
        "mkdir -p /mnt && mount -t tmpfs none /mnt && printf 'MOUNT-%s\\n' OK",
    ] {
        let (_t, dir) = project("bwrap", &one_step(attack), &[SCRIPT]);
        let (code, out) = apply(&dir);
        assert_eq!(code, 3, "{attack}: {out}");
        assert_eq!(
            std::fs::read_to_string(dir.join("scripts/provision.sh")).unwrap(),
            "echo provisioned\n",
            "{attack}"
        );
        assert!(!out.contains("MOUNT-OK"), "{attack}: {out}");
    }
}

#[test]
fn attack_the_state_file_is_unreachable() {
    if !require_tools(BUSYBOX_TOOLS) {
        return;
    }
    // The marker is spelled out by printf, so the command text (which the state records)
    // does not hold it.
    let attack = "ls -a; find / -name 'state.db*' 2>/dev/null | grep . ; printf 'PW%s' NED >> .imgraph/state.db";
    let (_t, dir) = project("bwrap", &one_step(attack), &[SCRIPT]);
    let (code, out) = apply(&dir);
    assert_eq!(code, 3, "{out}");
    // The state still reads and records the failed build.
    let ws = imgraph::workspace::Workspace::open(&dir).unwrap();
    let history = ws
        .state
        .history(&imgraph::graph::NodeId::build("box"))
        .unwrap();
    assert!(history.last_success.is_none());
    let bytes = std::fs::read(dir.join(".imgraph/state.db")).unwrap();
    assert!(!bytes.windows(5).any(|w| w == b"PWNED"));
    assert!(out.contains("can't create .imgraph/state.db"), "{out}");
}

#[test]
fn attack_the_callers_environment_is_not_visible() {
    if !require_tools(BUSYBOX_TOOLS) {
        return;
    }
    let attack = "env; cat /proc/[0-9]*/environ | tr '\\\\0' '\\\\n'; cat /proc/[0-9]*/environ | grep -q 'hunt[e]r2'";
    let (_t, dir) = project("bwrap", &one_step(attack), &[SCRIPT]);
    let out = imgraph(&dir)
        .arg("apply")
        .env("AWS_SECRET_ACCESS_KEY", "hunter2")
        .env("DEPLOY_TOKEN", "hunter2")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    let log = node_log(&dir, "build:box");
    assert!(log.contains("SOURCE_DATE_EPOCH=315532800"), "{log}");
    assert!(log.contains("IMGRAPH_IMAGE=box"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    assert!(!log.contains("DEPLOY_TOKEN"), "{log}");
}

#[test]
fn attack_no_capability_over_the_host_remains() {
    if !require_tools(BUSYBOX_TOOLS) {
        return;
    }
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    for attack in [
        "echo '|/bin/sh -c pwned' > /proc/sys/kernel/core_pattern",
        "echo 1 > /proc/sys/kernel/sysrq",
        "head -c 64 /dev/zero > /tmp/x.ko && insmod /tmp/x.ko",
        "mknod /tmp/disk b 8 0 && head -c 512 /tmp/disk",
        "hostname pwned",
        "ip link set lo down",
    ] {
        let (_t, dir) = project("bwrap", &one_step(attack), &[SCRIPT]);
        let (code, out) = apply(&dir);
        assert_eq!(code, 3, "{attack}: {out}");
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        core_pattern
    );
    assert_eq!(
        std::fs::read_to_string("/proc/modules").unwrap_or_default(),
        modules
    );
    // What is left: no capability that acts on the host.
    let (_t, dir) = project(
        "bwrap",
        &one_step("grep CapEff /proc/self/status > /etc/caps"),
        &[SCRIPT],
    );
    let (code, out) = apply(&dir);
    assert_eq!(code, 0, "{out}");
    let (_u, root) = unpack_newest(&dir, "box");
    let caps = std::fs::read_to_string(root.join("etc/caps")).unwrap();
    let hex = caps.split_whitespace().nth(1).unwrap();
    let eff = u64::from_str_radix(hex, 16).unwrap();
    // CAP_DAC_READ_SEARCH 2, NET_ADMIN 12, NET_RAW 13, SYS_MODULE 16, SYS_RAWIO 17,
    // SYS_PTRACE 19, SYS_ADMIN 21, SYS_BOOT 22, MKNOD 27, SYS_TIME 25, BPF 39.
    for bit in [2, 12, 13, 16, 17, 19, 21, 22, 25, 27, 39] {
        assert_eq!(eff & (1 << bit), 0, "capability {bit} kept: {caps}");
    }
}

#[test]
fn attack_the_host_roots_keys_and_new_user_namespaces_are_out_of_reach() {
    if !require_tools(BUSYBOX_TOOLS) || !require_root() {
        return;
    }
    // A key in the host root's user keyring, which uid 0 may otherwise view anywhere.
    let (kind, desc, payload) = (c"user", c"imgraph-attack-test-key", b"hunter2");
    // SAFETY: add_key reads the three buffers and returns a key id or -1.
    let key = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            kind.as_ptr(),
            desc.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            -4i32, // KEY_SPEC_USER_KEYRING
        )
    };
    assert!(key > 0, "add_key: {}", std::io::Error::last_os_error());
    let visible = std::fs::read_to_string("/proc/keys").unwrap_or_default();
    let results: Vec<(&str, i32, String)> = [
        "grep imgraph-attack /proc/keys",
        "grep -l . /proc/key-users",
        "unshare -U true",
        "unshare -r -n true",
    ]
    .into_iter()
    .map(|attack| {
        let (_t, dir) = project("bwrap", &one_step(attack), &[SCRIPT]);
        let (code, out) = apply(&dir);
        (attack, code, out)
    })
    .collect();
    // SAFETY: keyctl(KEYCTL_REVOKE = 3, id) only acts on the key made above.
    unsafe {
        libc::syscall(libc::SYS_keyctl, 3, key);
    }
    assert!(visible.contains("imgraph-attack"), "the host sees its key");
    for (attack, code, out) in results {
        assert_eq!(code, 3, "{attack}: {out}");
    }
}

#[test]
fn attack_a_bind_mount_of_a_host_folder_cannot_be_made_in_the_sandbox() {
    if !require_tools(BUSYBOX_TOOLS) {
        return;
    }
    let (_t, dir) = project(
        "bwrap",
        &one_step("mkdir -p /mnt/host && mount --bind /tmp/imgraph-project /mnt/host; exit 1"),
        &[SCRIPT],
    );
    let (code, out) = apply(&dir);
    assert_eq!(code, 3, "{out}");
    assert!(dir.join("scripts/provision.sh").exists());
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
}

#[test]
fn a_mount_a_host_step_leaves_behind_is_detached_and_the_host_folder_keeps_its_files() {
    if !require_tools(BUSYBOX_TOOLS) || !require_root() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    write(&host.path().join("keep.txt"), "host data\n");
    let mount = |exit: u8| {
        format!(
            "mkdir -p $IMGRAPH_ROOT/mnt/host && mount --bind {} $IMGRAPH_ROOT/mnt/host && exit {exit}",
            host.path().display()
        )
    };
    // The step fails: the staging folder is removed, the host folder is not.
    let (_t, dir) = project("none", &one_step(&mount(1)), &[SCRIPT]);
    let (code, out) = apply(&dir);
    assert_eq!(code, 3, "{out}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("keep.txt")).unwrap(),
        "host data\n"
    );
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    // The step succeeds: the host folder is not packed into the image.
    let (_t2, dir) = project("none", &one_step(&mount(0)), &[SCRIPT]);
    let (code, out) = apply(&dir);
    assert_eq!(code, 0, "{out}");
    assert!(node_log(&dir, "build:box").contains("which a step left mounted"));
    let (_u, root) = unpack_newest(&dir, "box");
    assert!(root.join("mnt/host").is_dir());
    assert!(!root.join("mnt/host/keep.txt").exists());
    assert_eq!(
        std::fs::read_to_string(host.path().join("keep.txt")).unwrap(),
        "host data\n"
    );
}

#[test]
fn processes_die_with_the_sandbox() {
    if !require_tools(BUSYBOX_TOOLS) {
        return;
    }
    // Each left-behind process sleeps for a duration no other process uses.
    let body = "image \"box\" {\n    from \"busybox\"\n    build \"rootfs\" { run \"setsid sleep 987651 > /dev/null 2>&1 & nohup sleep 987652 > /dev/null 2>&1 & true\"; }\n    test \"bg\" { run \"setsid sleep 987653 > /dev/null 2>&1 & true\"; }\n}\n";
    let (_t, dir) = project("bwrap", body, &[]);
    let (code, out) = apply(&dir);
    assert_eq!(code, 0, "{out}");
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("98765"))
        .collect();
    assert!(survivors.is_empty(), "{survivors:?}");
}

#[test]
fn an_image_symlink_cannot_make_the_sandbox_write_on_the_host() {
    if !require_tools(BUSYBOX_TOOLS) {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    let target = host.path().display().to_string();
    let (_t, dir) = project("bwrap", &one_step("true"), &[SCRIPT]);
    // A hostile origin: the folders the sandbox mounts on are symlinks to host paths, as
    // the host sees them and as bwrap sees the host while it sets up (`/oldroot`).
    let root = dir.join("bases/busybox-root");
    for (name, link) in [
        ("tmp", format!("/oldroot{target}/tmp")),
        ("run", format!("{target}/run")),
        ("sys", format!("/oldroot{target}/sys")),
        ("proc", format!("../../../../../..{target}/proc")),
        ("etc/resolv.conf", format!("/oldroot{target}/resolv.conf")),
    ] {
        let path = root.join(name);
        if path.is_dir() {
            std::fs::remove_dir(&path).unwrap();
        }
        std::os::unix::fs::symlink(link, path).unwrap();
    }
    let (code, out) = apply(&dir);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        std::fs::read_dir(host.path()).unwrap().count(),
        0,
        "the sandbox wrote on the host"
    );
}

#[test]
fn unprivileged_steps_write_files_but_cannot_change_owners() {
    if !require_tools(BUSYBOX_TOOLS) || !require_root() {
        return;
    }
    // Run by `nobody`, as a CI runner without root would run it.
    let body = "image \"box\" {\n    from \"busybox\"\n    build \"rootfs\" { run \"id -u > /etc/uid && sh scripts/provision.sh > /etc/out\"; }\n    input \"scripts\"\n    test \"inside\" { run \"grep -x provisioned /etc/out\"; }\n}\nimage \"chown\" {\n    from \"busybox\"\n    build \"rootfs\" { run \"touch /etc/x && chown 1000 /etc/x\"; }\n}\n";
    let (tmp, dir) = project("bwrap", body, &[SCRIPT]);
    let nobody = 65534;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let chown = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(chown.success());
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(assert_cmd::cargo::cargo_bin("imgraph"))
        .arg("-C")
        .arg(&dir)
        .arg("apply")
        .env("NO_COLOR", "1")
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("ok      test:box/inside"), "{text}");
    assert!(text.contains("failed  build:chown"), "{text}");
    assert!(text.contains("chown: /etc/x: Invalid argument"), "{text}");
    let (_u, root) = unpack_newest(&dir, "box");
    // Root inside, the caller outside: the files belong to whoever ran imgraph.
    assert_eq!(
        std::fs::read_to_string(root.join("etc/uid")).unwrap(),
        "0\n"
    );
    let meta = std::fs::metadata(dir.join(".imgraph/images")).unwrap();
    assert_eq!(meta.uid(), nobody);
}

// ---- modes ---------------------------------------------------------------------------

#[test]
fn staging_instances_and_the_store_are_private() {
    if !require_tools(BUSYBOX_TOOLS) {
        return;
    }
    let body = "image \"box\" {\n    from \"busybox\"\n    build \"rootfs\" { run \"stat -c %a $IMGRAPH_ROOT/.. > $IMGRAPH_ROOT/etc/staging-mode\"; }\n    test \"mode\" { run \"stat -c %a $IMGRAPH_INSTANCE_ROOT/.. | grep -x 700\"; }\n}\n";
    let (_t, dir) = project("none", body, &[]);
    let (code, out) = apply(&dir);
    assert_eq!(code, 0, "{out}");
    let (_u, root) = unpack_newest(&dir, "box");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/staging-mode")).unwrap(),
        "700\n"
    );
    let store = dir.join(".imgraph/images");
    assert_eq!(
        std::fs::metadata(&store).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    // Artifacts 0600; the registry of versions beside them 0700, its files 0600.
    let registry = store.join("registry");
    let entries = std::fs::read_dir(&store)
        .unwrap()
        .chain(std::fs::read_dir(&registry).unwrap());
    for entry in entries {
        let meta = entry.unwrap().metadata().unwrap();
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(meta.permissions().mode() & 0o7777, want);
    }
}
