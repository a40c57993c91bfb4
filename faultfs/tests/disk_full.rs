//! A full disk refuses writes with ENOSPC until healed.

mod common;

use std::fs::{self, File};
use std::io::Write;

use common::Fixture;

const ENOSPC: i32 = 28;

fn free_blocks(fx: &Fixture) -> u64 {
    nix::sys::statvfs::statvfs(fx.mountpoint())
        .expect("statvfs")
        .blocks_available()
}

#[test]
fn a_full_disk_refuses_writes_with_enospc_until_healed() {
    let fx = Fixture::mount();
    let control = fx.control();
    let mut f = File::create(fx.path("x")).expect("create");
    f.write_all(b"before").expect("write");
    assert!(free_blocks(&fx) > 0);

    control.set_disk_full(true);
    assert!(control.is_disk_full());
    let err = f.write_all(b"during").expect_err("a write on a full disk");
    assert_eq!(err.raw_os_error(), Some(ENOSPC), "{err}");
    let err = File::create(fx.path("new")).expect_err("a create on a full disk");
    assert_eq!(err.raw_os_error(), Some(ENOSPC), "{err}");
    let err = fs::create_dir(fx.path("dir")).expect_err("a mkdir on a full disk");
    assert_eq!(err.raw_os_error(), Some(ENOSPC), "{err}");
    let err = f
        .set_len(1 << 20)
        .expect_err("growing a file on a full disk");
    assert_eq!(err.raw_os_error(), Some(ENOSPC), "{err}");
    assert_eq!(free_blocks(&fx), 0, "df shows the disk full");
    f.sync_all().expect("an fsync of data accepted earlier");
    assert_eq!(fs::read(fx.path("x")).expect("reads work"), b"before");

    control.set_disk_full(false);
    assert!(!control.is_disk_full());
    f.write_all(b"+after").expect("a write once healed");
    File::create(fx.path("new"))
        .and_then(|mut n| n.write_all(b"new"))
        .expect("a create once healed");
    fs::create_dir(fx.path("dir")).expect("a mkdir once healed");
    assert_eq!(fs::read(fx.path("x")).expect("read"), b"before+after");
    assert!(free_blocks(&fx) > 0);
}
