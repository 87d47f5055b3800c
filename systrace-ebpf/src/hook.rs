//! A hook's arguments and the previous program's verdict, at the positions the
//! agent read from the running kernel's BTF (see `kernel::HOOK_ARGS`).

use aya_ebpf::{programs::LsmContext, EbpfContext as _};
use systrace_common::Hook;

use crate::kernel;

/// Reads context slot N with one load at a constant offset from the context
/// pointer, written as assembly: the verifier refuses a load through a context
/// pointer that was moved first, and LLVM, left to itself, merges the slots'
/// loads into exactly that.
macro_rules! slot_readers {
    ($($name:ident = $off:literal),* $(,)?) => {
        $(
            #[inline(always)]
            fn $name(args: *const u64) -> u64 {
                let value: u64;
                unsafe {
                    core::arch::asm!(
                        concat!("{0} = *(u64 *)({1} + ", $off, ")"),
                        out(reg) value,
                        in(reg) args,
                        options(readonly, nostack, preserves_flags),
                    );
                }
                value
            }
        )*
    };
}
slot_readers!(slot0 = 0, slot1 = 8, slot2 = 16, slot3 = 24, slot4 = 32, slot5 = 40, slot6 = 48);

/// Context slot `index`. The index is a frozen read-only global, so the
/// verifier walks only the arm that is in bounds for this kernel's hook.
#[inline(always)]
fn slot(ctx: &LsmContext, index: u8) -> u64 {
    let args = ctx.as_ptr() as *const u64;
    match index {
        0 => slot0(args),
        1 => slot1(args),
        2 => slot2(args),
        3 => slot3(args),
        4 => slot4(args),
        5 => slot5(args),
        6 => slot6(args),
        _ => 0,
    }
}

/// Argument `k` of `hook`, as the hook table lists its arguments.
#[inline(always)]
pub fn arg<T: FromSlot>(ctx: &LsmContext, hook: Hook, k: usize) -> T {
    T::from_slot(slot(ctx, kernel::arg_index(hook, k)))
}

/// The return value of the BPF LSM program that ran before this one on the same
/// hook (0 when none refused).
#[inline(always)]
pub fn previous_verdict(ctx: &LsmContext, hook: Hook) -> i32 {
    slot(ctx, kernel::ret_index(hook)) as i32
}

/// Conversion from a 64-bit context slot to an argument's type.
pub trait FromSlot {
    fn from_slot(v: u64) -> Self;
}

impl FromSlot for *const u8 {
    #[inline(always)]
    fn from_slot(v: u64) -> Self {
        v as *const u8
    }
}

impl FromSlot for u64 {
    #[inline(always)]
    fn from_slot(v: u64) -> Self {
        v
    }
}

impl FromSlot for u32 {
    #[inline(always)]
    fn from_slot(v: u64) -> Self {
        v as u32
    }
}

impl FromSlot for i32 {
    #[inline(always)]
    fn from_slot(v: u64) -> Self {
        v as i32
    }
}

/// `rc` as the verifier must see a hook's return value: 0 or a negative errno,
/// bounded in a form it tracks. Results that pass through the global functions
/// or the stack are unknown to the verifier, and LLVM, which knows their range,
/// drops plain checks and turns `0 - x` into a negation the verifier does not
/// follow; so the last steps are written out. A positive value (never made)
/// fails closed as EPERM.
#[inline(always)]
pub fn bounded(rc: i32) -> i32 {
    let errno: u64 = if rc > 0 { 1 } else { rc.wrapping_neg() as u32 as u64 };
    let out: u64;
    unsafe {
        core::arch::asm!(
            "{e} &= 4095",
            "{o} = 0",
            "{o} -= {e}",
            e = inout(reg) errno => _,
            o = out(reg) out,
            options(pure, nomem, nostack),
        );
    }
    out as i32
}

/// Declares the program for an LSM hook: the previous program's refusal is
/// kept, otherwise `body` decides.
macro_rules! lsm_program {
    ($(#[doc = $doc:literal])* $name:ident = $hook_name:literal, $hook:expr, |$ctx:ident| $body:expr) => {
        $(#[doc = $doc])*
        #[aya_ebpf::macros::lsm(hook = $hook_name)]
        #[inline(always)]
        pub fn $name($ctx: aya_ebpf::programs::LsmContext) -> i32 {
            let rc: i32 = match $crate::hook::previous_verdict(&$ctx, $hook) {
                0 => $body,
                previous => previous,
            };
            // What an LSM hook may return: 0 or an errno. Results that pass
            // through the global functions or the stack are unknown to the
            // verifier; this bounds them, failing closed. black_box keeps LLVM,
            // which knows the range, from dropping the check.
            $crate::hook::bounded(rc)
        }
    };
}
pub(crate) use lsm_program;
