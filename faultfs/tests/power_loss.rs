//! A power loss drops what was not fsynced and keeps what was.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;

use common::Fixture;
use faultfs::PowerLoss;

#[test]
fn power_loss_drops_an_unsynced_write_and_keeps_a_synced_one() {
    let fx = Fixture::mount();
    let control = fx.control();

    let mut a = File::create(fx.path("a")).expect("create a");
    a.write_all(b"synced").expect("write a");
    a.sync_all().expect("fsync a");
    assert_eq!(control.unsynced_bytes(), 0, "an fsync writes the data back");
    fs::write(fx.path("b"), b"never synced").expect("write b");
    a.write_all(b"+lost").expect("append to a");
    drop(a); // a close persists nothing

    assert_eq!(fs::read(fx.path("a")).expect("read a"), b"synced+lost");
    assert_eq!(fs::read(fx.path("b")).expect("read b"), b"never synced");
    assert_eq!(fs::metadata(fx.path("a")).expect("stat a").len(), 11);
    assert_eq!(control.unsynced_bytes(), 17);
    assert_eq!(fs::read(fx.backing("a")).expect("backing a"), b"synced");
    assert_eq!(fs::read(fx.backing("b")).expect("backing b"), b"");

    let lost = control.power_loss();
    println!("power loss: {lost}");
    assert_eq!(
        lost,
        PowerLoss {
            files: 2,
            bytes: 17
        }
    );
    assert_eq!(control.unsynced_bytes(), 0);

    assert_eq!(fs::read(fx.path("a")).expect("read a"), b"synced");
    assert_eq!(fs::metadata(fx.path("a")).expect("stat a").len(), 6);
    assert_eq!(
        fs::read(fx.path("b")).expect("read b"),
        b"",
        "created, never synced"
    );
    assert_eq!(
        control.power_loss(),
        PowerLoss::default(),
        "nothing left to drop"
    );
}

#[test]
fn overwrites_and_holes_read_back_and_fdatasync_persists_them() {
    let fx = Fixture::mount();
    let control = fx.control();
    fs::write(fx.backing("f"), b"0123456789").expect("backing file");

    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.path("f"))
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&f, b"AB", 3).expect("overwrite");
    std::os::unix::fs::FileExt::write_all_at(&f, b"Z", 12).expect("past the end");
    assert_eq!(fs::read(fx.path("f")).expect("read"), b"012AB56789\0\0Z");
    assert_eq!(fs::read(fx.backing("f")).expect("backing"), b"0123456789");

    f.sync_data().expect("fdatasync");
    assert_eq!(control.unsynced_bytes(), 0);
    assert_eq!(
        fs::read(fx.backing("f")).expect("backing"),
        b"012AB56789\0\0Z"
    );
    f.write_all(b"tail").expect("write");
    drop(f);
    assert_eq!(control.power_loss(), PowerLoss { files: 1, bytes: 4 });
    assert_eq!(fs::read(fx.path("f")).expect("read"), b"012AB56789\0\0Z");
}

#[test]
fn renames_carry_pending_data_and_a_temp_file_replaces_a_manifest() {
    let fx = Fixture::mount();
    let control = fx.control();
    fs::create_dir(fx.path("d")).expect("mkdir");
    let mut f = File::create(fx.path("d/f")).expect("create");
    f.write_all(b"kept").expect("write");
    f.sync_all().expect("fsync");
    f.write_all(b"+pending").expect("write");
    drop(f);

    fs::rename(fx.path("d"), fx.path("e")).expect("rename a directory");
    assert_eq!(fs::read(fx.path("e/f")).expect("read"), b"kept+pending");
    assert!(!fx.path("d").exists());
    OpenOptions::new()
        .write(true)
        .open(fx.path("e/f"))
        .and_then(|f| f.sync_all())
        .expect("fsync under the new name");
    assert_eq!(
        fs::read(fx.backing("e/f")).expect("backing"),
        b"kept+pending"
    );

    // Redis's manifest: written to a temporary file, fsynced, renamed over the old one.
    fs::write(fx.path("manifest"), b"old").expect("old manifest");
    let mut tmp = File::create(fx.path("temp-manifest")).expect("temp");
    tmp.write_all(b"new manifest").expect("write");
    tmp.sync_all().expect("fsync");
    drop(tmp);
    fs::rename(fx.path("temp-manifest"), fx.path("manifest")).expect("rename over");
    assert_eq!(
        fs::read(fx.path("manifest")).expect("read"),
        b"new manifest"
    );

    let lost = control.power_loss();
    assert_eq!(
        lost,
        PowerLoss { files: 0, bytes: 0 },
        "the replaced file's data went with it"
    );
    assert_eq!(
        fs::read(fx.path("manifest")).expect("read"),
        b"new manifest"
    );
    assert_eq!(fs::read(fx.path("e/f")).expect("read"), b"kept+pending");
    let mut names: Vec<_> = fs::read_dir(fx.mountpoint())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["e", "manifest"]);

    fs::remove_file(fx.path("manifest")).expect("unlink");
    fs::remove_file(fx.path("e/f")).expect("unlink");
    fs::remove_dir(fx.path("e")).expect("rmdir");
    assert_eq!(fs::read_dir(fx.backing("")).expect("readdir").count(), 0);
}

#[test]
fn truncation_applies_at_once_and_drops_pending_bytes_beyond() {
    let fx = Fixture::mount();
    let control = fx.control();
    let mut f = File::create(fx.path("t")).expect("create");
    f.write_all(b"0123456789").expect("write");
    f.set_len(4).expect("truncate");
    assert_eq!(control.unsynced_bytes(), 4);
    assert_eq!(fs::read(fx.path("t")).expect("read"), b"0123");
    assert_eq!(fs::metadata(fx.backing("t")).expect("backing").len(), 4);
    drop(f);
    control.power_loss();
    assert_eq!(fs::read(fx.path("t")).expect("read"), b"\0\0\0\0");
}
