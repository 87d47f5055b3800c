//! What the programs need to know about the running kernel, read from its BTF:
//! struct field offsets and each hook's argument positions.
//!
//! rustc emits no CO-RE relocations for eBPF code, so the programs cannot carry
//! layouts compiled for one kernel: `struct file` puts `f_inode` at byte 32 on 6.1
//! and at byte 40 on 6.12, and `inode_setattr` gained an idmap argument in 6.3.
//! The agent looks everything up here and hands it to the programs as read-only
//! globals (`OFFSETS`, `HOOK_ARGS`).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, Type};
use systrace_common::{Hook, HOOK_ARG_SLOTS, HOOK_SLOTS, OFFSET_ABSENT, OFFSET_COUNT, OFFSET_FIELDS};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Everything the programs are told about this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLayout {
    /// Byte offsets, indexed by `systrace_common::Off`.
    pub offsets: [u64; OFFSET_COUNT],
    /// Which of a field's alternatives (`a|b`) this kernel has, by index.
    pub forms: [u8; OFFSET_COUNT],
    /// Per hook: argument count, then each listed argument's position.
    pub hook_args: Vec<u8>,
    /// Hooks this kernel has no `bpf_lsm_*` function for (newer hooks on
    /// older kernels), with the version that added them.
    pub missing_hooks: Vec<Hook>,
}

impl KernelLayout {
    pub fn has(&self, hook: Hook) -> bool {
        !self.missing_hooks.contains(&hook)
    }
}

/// The kernel symbols whose sequences version the walk cache's answers, in
/// the order of the `SEQLOCKS` global.
pub const SEQLOCK_SYMBOLS: [&str; 2] = ["rename_lock", "mount_lock"];

/// The addresses of [`SEQLOCK_SYMBOLS`] in the text of /proc/kallsyms; `None`
/// when one is missing or hidden (printed as zeros when `kptr_restrict` hides
/// addresses): the walk cache stays off.
pub fn seqlock_addresses(kallsyms: &str) -> Option<[u64; 2]> {
    let mut out = [0u64; 2];
    for line in kallsyms.lines() {
        let mut words = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name), None) = (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        // Symbols of the kernel itself (a module's lines have a fourth word).
        // The kind is the section's: data or bss up to 6.x, but 7.x lists
        // these two (cache-line aligned) as `T`; the names are variables'
        // on every kernel, so any data, bss, read-only or text kind is taken.
        if !matches!(kind, "D" | "d" | "B" | "b" | "R" | "r" | "T" | "t") {
            continue;
        }
        if let Some(i) = SEQLOCK_SYMBOLS.iter().position(|s| *s == name) {
            out[i] = u64::from_str_radix(addr, 16).ok()?;
        }
    }
    out.iter().all(|&a| a != 0).then_some(out)
}

/// Reads the layout from a BTF file.
pub fn resolve(btf_path: &Path) -> Result<KernelLayout> {
    let btf = Btf::from_file(btf_path).map_err(|e| anyhow!("{}: cannot parse BTF: {e}", btf_path.display()))?;
    let mut offsets = [0u64; OFFSET_COUNT];
    let mut forms = [0u8; OFFSET_COUNT];
    for (i, &(strukt, field)) in OFFSET_FIELDS.iter().enumerate() {
        let Some(optional) = strukt.strip_prefix('?') else {
            let (form, bytes) = member_offset_form(&btf, strukt, field)
                .with_context(|| format!("offset of {strukt}.{field} in {}", btf_path.display()))?;
            offsets[i] = bytes;
            forms[i] = form as u8;
            continue;
        };
        let (module, strukt) = match optional.split_once(':') {
            Some((module, strukt)) => (Some(module), strukt),
            None => (None, optional),
        };
        offsets[i] = OFFSET_ABSENT;
        if let Ok((form, bytes)) = member_offset_form(&btf, strukt, field) {
            (offsets[i], forms[i]) = (bytes, form as u8);
        } else if let Some(module_btf) = module.and_then(|m| module_btf(btf_path, &btf, m)) {
            if let Ok((form, bytes)) = member_offset_form(&module_btf, strukt, field) {
                (offsets[i], forms[i]) = (bytes, form as u8);
            }
        }
    }
    let mut hook_args = vec![0u8; HOOK_SLOTS * HOOK_ARG_SLOTS];
    let mut missing_hooks = Vec::new();
    for &hook in Hook::ALL {
        let params = match hook_params(&btf, hook.name()) {
            Ok(params) => params,
            Err(e) if hook.since().is_some() => {
                let _ = e;
                missing_hooks.push(hook);
                continue;
            }
            Err(e) => return Err(e.context(format!("LSM hook {} in {}", hook.name(), btf_path.display()))),
        };
        let slot = hook.slot();
        hook_args[slot] = params.len() as u8;
        for (k, wanted) in hook.args().iter().enumerate() {
            let position = params.iter().position(|p| param_is(p, wanted)).ok_or_else(|| {
                anyhow!(
                    "LSM hook {} has no argument {wanted} in {} (it has: {})",
                    hook.name(),
                    btf_path.display(),
                    params.join(", ")
                )
            })?;
            hook_args[slot + 1 + k] = position as u8;
        }
    }
    Ok(KernelLayout { offsets, forms, hook_args, missing_hooks })
}

/// The BTF of kernel module `module`, beside the kernel's own (which it
/// extends), if the module is loaded. Built into the kernel, its types are in
/// the kernel's BTF; not loaded, no object of its can exist yet. The agent
/// loads the modules it reads from ([`load_modules`]) before resolving.
fn module_btf(vmlinux: &Path, base: &Btf, module: &str) -> Option<Btf> {
    let path = vmlinux.with_file_name(module);
    Btf::from_split_file(&path, base).ok()
}

/// Loads the kernel modules whose structs [`resolve`] reads (overlayfs), so
/// that a module loaded only later, with the first container, does not leave
/// its layout unknown. Best effort: a kernel without the module cannot mount
/// what it provides.
pub fn load_modules() {
    for (strukt, _) in OFFSET_FIELDS {
        let Some((module, _)) = strukt.strip_prefix('?').and_then(|s| s.split_once(':')) else {
            continue;
        };
        if Path::new(VMLINUX_BTF).with_file_name(module).exists() {
            continue;
        }
        let _ = std::process::Command::new("modprobe")
            .args(["-q", module])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Whether the BTF parameter name `param` is the argument `wanted`.
///
/// Newer kernels annotate some hook arguments for the verifier with a suffix
/// after a double underscore: 7.x names `mmap_file`'s first argument
/// `file__nullable` (it is NULL for anonymous mappings, as it always was), and
/// kfuncs use `__ref`, `__str`, `__k`, `__ign`, `__opt`, `__uninit`. The
/// suffix changes what BTF-typed access may assume, not what the argument is,
/// and the programs read arguments as raw context words and check pointers
/// for NULL themselves (`map_code` allows a NULL file: anonymous memory has no
/// file to decide by). So `file__nullable` is `file`; a name that merely
/// starts with `file` (`file_flags`) is not.
pub fn param_is(param: &str, wanted: &str) -> bool {
    match param.strip_prefix(wanted) {
        Some("") => true,
        Some(suffix) => suffix
            .strip_prefix("__")
            .is_some_and(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')),
        None => false,
    }
}

/// Names of the arguments of LSM hook `hook` (`bpf_lsm_<hook>` in the kernel's BTF).
pub fn hook_params(btf: &Btf, hook: &str) -> Result<Vec<String>> {
    let name = format!("bpf_lsm_{hook}");
    let func = btf
        .resolve_types_by_name(&name)
        .map_err(|e| anyhow!("no function {name}: {e}"))?
        .into_iter()
        .find_map(|t| match t {
            Type::Func(f) => Some(f),
            _ => None,
        })
        .ok_or_else(|| anyhow!("{name} is not a function"))?;
    match btf.resolve_chained_type(&func).map_err(|e| anyhow!("{e}"))? {
        Type::FuncProto(proto) => {
            Ok(proto.parameters.iter().map(|p| btf.resolve_name(p).unwrap_or_default()).collect())
        }
        other => bail!("{name} has a {} instead of a prototype", other.name()),
    }
}

/// Which alternative of `field` (`a|b`: a member that a later kernel renamed or
/// replaced; the first that exists wins) this BTF has, and its byte offset.
pub fn member_offset_form(btf: &Btf, strukt: &str, field: &str) -> Result<(usize, u64)> {
    let mut last = None;
    for (form, alternative) in field.split('|').enumerate() {
        match member_offset(btf, strukt, alternative) {
            Ok(bytes) => return Ok((form, bytes)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no member named in {field:?}")))
}

/// Byte offset of `field` (dotted for nested members) in `struct strukt`.
pub fn member_offset(btf: &Btf, strukt: &str, field: &str) -> Result<u64> {
    if field.contains('|') {
        return member_offset_form(btf, strukt, field).map(|(_, bytes)| bytes);
    }
    let mut ty = find_struct(btf, strukt)?;
    let mut total_bits = 0u64;
    for part in field.split('.') {
        let (bits, member_ty) =
            find_member(btf, &ty, part)?.ok_or_else(|| anyhow!("struct {strukt} has no member {part}"))?;
        total_bits += bits;
        ty = member_ty;
    }
    if !total_bits.is_multiple_of(8) {
        bail!("{strukt}.{field} is a bitfield");
    }
    Ok(total_bits / 8)
}

/// `struct name`, or the struct a typedef `name` stands for (`seqlock_t`).
fn find_struct(btf: &Btf, name: &str) -> Result<Type> {
    let types = btf.resolve_types_by_name(name).map_err(|e| anyhow!("no type {name}: {e}"))?;
    let is_struct = |t: &Type| matches!(t, Type::Struct(s) if !s.members.is_empty());
    for t in types {
        let t = if matches!(t, Type::Typedef(_)) { strip(btf, t)? } else { t };
        if is_struct(&t) {
            return Ok(t);
        }
    }
    bail!("no struct {name}")
}

/// Finds `name` in a struct or union, descending into anonymous members.
/// Returns its bit offset and its type (typedefs and qualifiers stripped).
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Result<Option<(u64, Type)>> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        other => bail!("cannot look up {name} in a {}", other.name()),
    };
    for member in members {
        let member_name = btf.resolve_name(member).unwrap_or_default();
        let member_ty = strip(btf, btf.resolve_chained_type(member).map_err(|e| anyhow!("{e}"))?)?;
        if member_name == name {
            return Ok(Some((member.bit_offset() as u64, member_ty)));
        }
        if member_name.is_empty() && matches!(member_ty, Type::Struct(_) | Type::Union(_)) {
            if let Some((bits, found)) = find_member(btf, &member_ty, name)? {
                return Ok(Some((member.bit_offset() as u64 + bits, found)));
            }
        }
    }
    Ok(None)
}

/// Follows typedefs and qualifiers to the underlying type.
fn strip(btf: &Btf, mut ty: Type) -> Result<Type> {
    for _ in 0..32 {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t).map_err(|e| anyhow!("{e}"))?,
            Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => {
                btf.resolve_chained_type(t).map_err(|e| anyhow!("{e}"))?
            }
            _ => return Ok(ty),
        };
    }
    bail!("type chain too long")
}

#[cfg(test)]
mod tests {
    use systrace_common::Off;

    use super::*;

    /// The machine's own kernel publishes BTF too (it refuses LSM programs, not
    /// BTF reads): every offset and hook argument must resolve from it, with
    /// values a kernel can have.
    #[test]
    fn resolves_every_field_and_argument_from_this_kernels_btf() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: {VMLINUX_BTF} is missing on this host");
            return;
        }
        let layout = resolve(path).unwrap();
        let at = |o: Off| layout.offsets[o as usize];
        // `mount` embeds its vfsmount after the hash node and parent/mountpoint pointers.
        assert!(at(Off::MOUNT_MNT) > at(Off::MOUNT_MNT_MOUNTPOINT));
        assert!(at(Off::DENTRY_D_NAME_NAME) > 0);
        // d_name's length shares a u64 with its hash, ahead of the name pointer.
        assert!(at(Off::DENTRY_D_NAME_LEN) < at(Off::DENTRY_D_NAME_NAME));
        // seqlock_t is a typedef of an anonymous struct; without lockdep the
        // sequence is its first word.
        assert_eq!(at(Off::SEQLOCK_SEQUENCE), 0);
        let args = |h: Hook| &layout.hook_args[h.slot()..h.slot() + HOOK_ARG_SLOTS];
        assert_eq!(args(Hook::FileOpen)[..2], [1, 0]);
        assert_eq!(args(Hook::PathUnlink)[..3], [2, 0, 1]);
        // path_rename gained its flags argument in 5.19: old_dir .. flags.
        assert_eq!(args(Hook::PathRename)[..6], [5, 0, 1, 2, 3, 4]);
        // inode_setattr takes an idmap first on every kernel since 6.3.
        assert_eq!(args(Hook::InodeSetattr)[..3], [3, 1, 2]);
        assert!(layout.missing_hooks.is_empty(), "{:?}", layout.missing_hooks);
    }

    #[test]
    fn annotated_argument_names_match_their_argument_and_nothing_else() {
        assert!(param_is("file", "file"));
        assert!(param_is("file__nullable", "file"));
        assert!(param_is("task__ref", "task"));
        assert!(!param_is("file_flags", "file"));
        assert!(!param_is("file__", "file"));
        assert!(!param_is("fil", "file"));
        assert!(!param_is("old_dentry", "dentry"));
    }

    #[test]
    fn seqlock_addresses_come_from_kallsyms_and_hidden_ones_turn_the_cache_off() {
        let text = "ffffffff81000000 T _text\nffffffff99c09600 D rename_lock\n\
                    ffffffffc0001000 d mount_lock\t[some_module]\nffffffff99c09680 D mount_lock\n";
        assert_eq!(seqlock_addresses(text), Some([0xffffffff99c09600, 0xffffffff99c09680]));
        // 7.3 lists both as T.
        let seven = "ffffffff84209800 T rename_lock\nffffffff84209880 T mount_lock\n";
        assert_eq!(seqlock_addresses(seven), Some([0xffffffff84209800, 0xffffffff84209880]));
        let hidden = "0000000000000000 D rename_lock\n0000000000000000 D mount_lock\n";
        assert_eq!(seqlock_addresses(hidden), None);
        assert_eq!(seqlock_addresses("ffffffff99c09600 D rename_lock\n"), None);
    }
}
