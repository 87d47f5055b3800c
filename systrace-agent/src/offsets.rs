//! Kernel struct field offsets, read from the running kernel's BTF.
//!
//! rustc emits no CO-RE relocations for eBPF code, so the programs cannot carry
//! layouts compiled for one kernel: `struct file` puts `f_inode` at byte 32 on 6.1
//! and at byte 40 on 6.12. The agent looks every field up here and hands the
//! offsets to the programs as read-only globals.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, Type};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// One resolved offset: the global it feeds and its byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offset {
    pub global: &'static str,
    pub bytes: u64,
}

/// Resolves every offset in `systrace_common::offsets::ALL` from a BTF file.
pub fn resolve(btf_path: &Path) -> Result<Vec<Offset>> {
    let btf = Btf::from_file(btf_path)
        .map_err(|e| anyhow!("{}: cannot parse BTF: {e}", btf_path.display()))?;
    systrace_common::offsets::ALL
        .iter()
        .map(|&(global, strukt, field)| {
            let bytes = member_offset(&btf, strukt, field)
                .with_context(|| format!("offset of {strukt}.{field} in {}", btf_path.display()))?;
            Ok(Offset { global, bytes })
        })
        .collect()
}

/// Byte offset of `field` (dotted for nested members) in `struct strukt`.
pub fn member_offset(btf: &Btf, strukt: &str, field: &str) -> Result<u64> {
    let mut ty = find_struct(btf, strukt)?;
    let mut total_bits = 0u64;
    for part in field.split('.') {
        let (bits, member_ty) = find_member(btf, &ty, part)?
            .ok_or_else(|| anyhow!("struct {strukt} has no member {part}"))?;
        total_bits += bits;
        ty = member_ty;
    }
    if total_bits % 8 != 0 {
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
