//! Kernel struct field offsets, read from the running kernel's BTF.
//!
//! rustc emits no CO-RE relocations for eBPF code, so the programs cannot carry
//! layouts compiled for one kernel: `struct file` puts `f_inode` at byte 32 on 6.1
//! and at byte 40 on 6.12. The agent looks every field up here and hands the
//! offsets to the programs as read-only globals.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, Type};
use systrace_common::Hook;

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// One resolved offset: the global it feeds and its byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offset {
    pub global: &'static str,
    pub bytes: u64,
}

/// Resolves every global the programs need from a BTF file: the struct offsets in
/// `systrace_common::offsets::ALL`, and for each hook the index of the previous
/// program's verdict in its context (its argument count).
pub fn resolve(btf_path: &Path) -> Result<Vec<Offset>> {
    let btf = Btf::from_file(btf_path)
        .map_err(|e| anyhow!("{}: cannot parse BTF: {e}", btf_path.display()))?;
    let mut globals = Vec::new();
    for &(global, strukt, field) in &systrace_common::offsets::ALL {
        let bytes = member_offset(&btf, strukt, field)
            .with_context(|| format!("offset of {strukt}.{field} in {}", btf_path.display()))?;
        globals.push(Offset { global, bytes });
    }
    for hook in Hook::ALL {
        let args = hook_arg_count(&btf, hook.name())
            .with_context(|| format!("LSM hook {} in {}", hook.name(), btf_path.display()))?;
        globals.push(Offset { global: systrace_common::offsets::ret_arg_global(hook), bytes: args });
    }
    Ok(globals)
}

/// Number of arguments of LSM hook `hook` (`bpf_lsm_<hook>` in the kernel's BTF).
pub fn hook_arg_count(btf: &Btf, hook: &str) -> Result<u64> {
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
        Type::FuncProto(proto) => Ok(proto.parameters.len() as u64),
        other => bail!("{name} has a {} instead of a prototype", other.name()),
    }
}

/// Byte offset of `field` (dotted for nested members) in `struct strukt`.
/// `a|b` names a member that a later kernel renamed: the first that exists wins.
pub fn member_offset(btf: &Btf, strukt: &str, field: &str) -> Result<u64> {
    if field.contains('|') {
        let mut last = None;
        for alternative in field.split('|') {
            match member_offset(btf, strukt, alternative) {
                Ok(bytes) => return Ok(bytes),
                Err(e) => last = Some(e),
            }
        }
        return Err(last.unwrap_or_else(|| anyhow!("no member named in {field:?}")));
    }
    let mut ty = find_struct(btf, strukt)?;
    let mut total_bits = 0u64;
    for part in field.split('.') {
        let (bits, member_ty) = find_member(btf, &ty, part)?
            .ok_or_else(|| anyhow!("struct {strukt} has no member {part}"))?;
        total_bits += bits;
        ty = member_ty;
    }
    if !total_bits.is_multiple_of(8) {
        bail!("{strukt}.{field} is a bitfield");
    }
    Ok(total_bits / 8)
}

fn find_struct(btf: &Btf, name: &str) -> Result<Type> {
    btf.resolve_types_by_name(name)
        .map_err(|e| anyhow!("no type {name}: {e}"))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
        .ok_or_else(|| anyhow!("no struct {name}"))
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
    use super::*;

    /// The machine's own kernel publishes BTF too (it refuses LSM programs, not
    /// BTF reads): every global must resolve from it, with values a kernel can have.
    #[test]
    fn resolves_every_global_from_this_kernels_btf() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: {VMLINUX_BTF} is missing on this host");
            return;
        }
        let globals = resolve(path).unwrap();
        assert_eq!(globals.len(), systrace_common::offsets::ALL.len() + Hook::ALL.len());
        let get = |name: &str| globals.iter().find(|o| o.global == name).unwrap().bytes;
        assert_eq!(get("RET_FILE_OPEN"), 1);
        assert_eq!(get("RET_PATH_UNLINK"), 2);
        assert!((4..=5).contains(&get("RET_PATH_RENAME")));
        // `mount` embeds its vfsmount after the hash node and parent/mountpoint pointers.
        assert!(get("OFF_MOUNT_MNT") > get("OFF_MOUNT_MNT_MOUNTPOINT"));
        assert!(get("OFF_DENTRY_D_NAME_NAME") > 0);
    }
}
