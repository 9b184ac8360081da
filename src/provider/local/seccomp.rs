//! The sandbox's system call filter: a small classic-BPF seccomp program that bwrap
//! installs (`--seccomp FD`) just before it starts the command.
//!
//! A command runs as the host's uid 0 (see [`super::sandbox`]), so what capabilities
//! cannot stop is stopped here, with `EPERM`:
//!
//! - the kernel keyrings (`keyctl`, `add_key`, `request_key`): uid 0's user keyring is
//!   shared with the host's root;
//! - new user namespaces (`unshare`/`clone` with `CLONE_NEWUSER`; `clone3`, whose flags a
//!   filter cannot read, answers `ENOSYS` so the C library falls back to `clone`): inside
//!   one a command would hold every capability over new namespaces, and with them the
//!   kernel's larger surface;
//! - what acts on the whole machine even where capabilities are checked late or not at
//!   all: `bpf`, `perf_event_open`, `userfaultfd`, `kexec_*`, module loading, `acct`,
//!   `swapon`/`swapoff`, `reboot`, `syslog`, clock setting, `quotactl`, `vhangup`,
//!   `open_by_handle_at`, and on x86-64 `iopl`/`ioperm`.
//!
//! System calls of another architecture (32-bit `int 0x80` calls, the x32 ABI) are refused
//! as a whole: their numbers differ, so the list above would not hold for them. The filter
//! exists for x86-64 and aarch64; elsewhere there is none ([`program`] is `None`).

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// The low 32 bits of the first argument (little-endian machines).
const ARG0_LOW: u32 = 16;

const CLONE_NEWUSER: u32 = 0x1000_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// System calls refused with `EPERM`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn refused() -> Vec<i64> {
    #[allow(unused_mut)]
    let mut calls = vec![
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_acct,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_syslog,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_quotactl,
        libc::SYS_vhangup,
        libc::SYS_open_by_handle_at,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([libc::SYS_iopl, libc::SYS_ioperm]);
    calls
}

/// The filter as bwrap reads it (`struct sock_filter` array, native byte order), or
/// `None` on an architecture it is not written for.
pub fn program() -> Option<Vec<u8>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let insns = instructions();
        let mut bytes = Vec::with_capacity(insns.len() * 8);
        for i in insns {
            bytes.extend_from_slice(&i.code.to_ne_bytes());
            bytes.push(i.jt);
            bytes.push(i.jf);
            bytes.extend_from_slice(&i.k.to_ne_bytes());
        }
        Some(bytes)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        None
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn instructions() -> Vec<Insn> {
    let nr = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
    let ld = |k| Insn {
        code: LD_W_ABS,
        jt: 0,
        jf: 0,
        k,
    };
    let ret = |k| Insn {
        code: RET_K,
        jt: 0,
        jf: 0,
        k,
    };
    // The tail every check jumps to: [allow, EPERM, ENOSYS].
    let mut body: Vec<Insn> = Vec::new();
    // Jumps are relative; each check is written knowing how far the tail is, so the body
    // is built first and the offsets fixed by `to_tail` below.
    enum Target {
        Allow,
        Eperm,
        Enosys,
        Next,
        /// Skip this many instructions after the next one.
        Skip(usize),
    }
    let mut checks: Vec<(Insn, Target, Target)> = Vec::new();
    let jump = |code, k| Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    checks.push((ld(ARCH), Target::Next, Target::Next));
    checks.push((jump(JEQ_K, AUDIT_ARCH), Target::Next, Target::Eperm));
    checks.push((ld(NR), Target::Next, Target::Next));
    #[cfg(target_arch = "x86_64")]
    checks.push((jump(JGE_K, 0x4000_0000), Target::Eperm, Target::Next));
    for call in refused() {
        checks.push((jump(JEQ_K, nr(call)), Target::Eperm, Target::Next));
    }
    checks.push((
        jump(JEQ_K, nr(libc::SYS_clone3)),
        Target::Enosys,
        Target::Next,
    ));
    // unshare(flags) and clone(flags, …): refuse CLONE_NEWUSER in the flags.
    // A call that is not this one skips the two instructions that read its flags, to the
    // next check (or to allow, after the last).
    for call in [libc::SYS_unshare, libc::SYS_clone] {
        checks.push((jump(JEQ_K, nr(call)), Target::Next, Target::Skip(2)));
        checks.push((ld(ARG0_LOW), Target::Next, Target::Next));
        checks.push((jump(JSET_K, CLONE_NEWUSER), Target::Eperm, Target::Allow));
    }
    let n = checks.len();
    let (allow, eperm, enosys) = (n, n + 1, n + 2);
    for (i, (insn, jt, jf)) in checks.into_iter().enumerate() {
        let offset = |t: Target| -> u8 {
            let to = match t {
                Target::Next => i + 1,
                Target::Skip(k) => i + 1 + k,
                Target::Allow => allow,
                Target::Eperm => eperm,
                Target::Enosys => enosys,
            };
            u8::try_from(to - i - 1).unwrap_or(u8::MAX)
        };
        let is_jump = insn.code & 0x07 == 0x05;
        body.push(if is_jump {
            Insn {
                jt: offset(jt),
                jf: offset(jf),
                ..insn
            }
        } else {
            insn
        });
    }
    body.push(ret(RET_ALLOW));
    body.push(ret(RET_ERRNO | libc::EPERM as u32));
    body.push(ret(RET_ERRNO | libc::ENOSYS as u32));
    body
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    /// Runs the program on one system call, as the kernel would.
    fn verdict(nr: i64, arch: u32, arg0: u64) -> u32 {
        let insns = instructions();
        let mut acc: u32 = 0;
        let mut pc = 0;
        loop {
            let i = insns[pc];
            match i.code {
                LD_W_ABS => {
                    acc = match i.k {
                        NR => nr as u32,
                        ARCH => arch,
                        ARG0_LOW => arg0 as u32,
                        other => panic!("load of offset {other}"),
                    };
                    pc += 1;
                }
                RET_K => return i.k,
                code => {
                    let taken = match code {
                        JEQ_K => acc == i.k,
                        JGE_K => acc >= i.k,
                        JSET_K => acc & i.k != 0,
                        other => panic!("opcode {other:#x}"),
                    };
                    pc += 1 + usize::from(if taken { i.jt } else { i.jf });
                }
            }
        }
    }

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn refused_calls_get_eperm_and_the_rest_pass() {
        assert_eq!(verdict(libc::SYS_keyctl, AUDIT_ARCH, 0), EPERM);
        assert_eq!(verdict(libc::SYS_bpf, AUDIT_ARCH, 0), EPERM);
        assert_eq!(verdict(libc::SYS_finit_module, AUDIT_ARCH, 0), EPERM);
        assert_eq!(verdict(libc::SYS_read, AUDIT_ARCH, 0), RET_ALLOW);
        assert_eq!(verdict(libc::SYS_setgroups, AUDIT_ARCH, 0), RET_ALLOW);
        assert_eq!(verdict(libc::SYS_mount, AUDIT_ARCH, 0), RET_ALLOW);
    }

    #[test]
    fn only_new_user_namespaces_are_refused() {
        let newuser = u64::from(CLONE_NEWUSER);
        assert_eq!(verdict(libc::SYS_unshare, AUDIT_ARCH, newuser), EPERM);
        assert_eq!(verdict(libc::SYS_unshare, AUDIT_ARCH, 0x2_0000), RET_ALLOW);
        assert_eq!(verdict(libc::SYS_clone, AUDIT_ARCH, newuser | 0x11), EPERM);
        assert_eq!(verdict(libc::SYS_clone, AUDIT_ARCH, 0x11), RET_ALLOW);
        assert_eq!(
            verdict(libc::SYS_clone3, AUDIT_ARCH, 0),
            RET_ERRNO | libc::ENOSYS as u32
        );
    }

    #[test]
    fn another_architectures_calls_are_refused() {
        assert_eq!(verdict(libc::SYS_read, 0x4000_0003, 0), EPERM);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(verdict(0x4000_0000, AUDIT_ARCH, 0), EPERM);
    }

    #[test]
    fn the_program_is_whole_instructions() {
        let bytes = program().unwrap();
        assert_eq!(bytes.len() % 8, 0);
        assert!(bytes.len() / 8 < 256, "jumps are 8-bit");
    }
}
