//! Host-side evidence for interrupt-remapping faults QEMU does not record.
//!
//! QEMU 7.2's VT-d model blocks a bad interrupt message (its `vtd_irte_get` refuses the entry)
//! but writes no fault record; it prints the reason on stderr, once per kind. The in-kernel
//! tests in `kernel/src/ktest/iommu/interrupt_remap.rs` then print
//! `ktest-evidence: ir-blocked-unrecorded reason=RR index=N sid=S` (S the requester id as a
//! number), and this module requires QEMU's own report of that refusal in the same boot's
//! output: the unit, not just the kernel, must have seen the forgery and refused it for the
//! reason the test expects.
//!
//! That is the fallback of the QEMU 7.2 configurations. The job `vtd-ir-records`
//! (`recording_qemu`) runs a QEMU that records the faults and requires the records themselves.

/// The QEMU 7.2 message that proves a refusal, for a fault reason (hex) the tests use.
fn qemu_report(reason: &str, index: &str, sid: &str) -> Option<String> {
    match reason {
        // 22h: entry not present.
        "22" => Some(format!("vtd_irte_get: detected non-present IRTE (index={index},")),
        // 26h: source-id validation failed.
        "26" => Some(format!("vtd_irte_get: invalid IRTE SID (index={index}, sid={sid},")),
        _ => None,
    }
}

/// Every evidence line in `output` without the QEMU report that backs it, as failure texts.
pub fn unbacked(output: &str) -> Vec<String> {
    let mut missing = Vec::new();
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("ktest-evidence: ir-blocked-unrecorded ") else { continue };
        let field = |name: &str| {
            rest.split_whitespace().find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix('='))).unwrap_or("")
        };
        let (reason, index, sid) = (field("reason"), field("index"), field("sid"));
        match qemu_report(reason, index, sid) {
            Some(report) if output.contains(&report) => {}
            Some(report) => missing.push(format!(
                "no fault record and no QEMU report `{report}` for a blocked interrupt (reason {reason}h)"
            )),
            None => missing.push(format!("unknown interrupt fault reason {reason}h in `{}`", line.trim())),
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_needs_the_matching_qemu_report() {
        let kernel = "ktest-evidence: ir-blocked-unrecorded reason=26 index=3 sid=24\n";
        let qemu = "qemu-system-x86_64: vtd_irte_get: invalid IRTE SID (index=3, sid=24, source_id=250)\n";
        assert!(unbacked(&format!("{kernel}{qemu}")).is_empty());
        assert_eq!(unbacked(kernel).len(), 1, "no QEMU report");
        let other = "qemu-system-x86_64: vtd_irte_get: invalid IRTE SID (index=4, sid=24, source_id=250)\n";
        assert_eq!(unbacked(&format!("{kernel}{other}")).len(), 1, "another index");
        let absent = "ktest-evidence: ir-blocked-unrecorded reason=22 index=128 sid=24\n\
                      qemu-system-x86_64: vtd_irte_get: detected non-present IRTE (index=128, high=0x0, low=0x0)\n";
        assert!(unbacked(absent).is_empty());
        assert!(unbacked("no evidence here\n").is_empty());
    }
}
