//! Names the families of operating systems tether's code is fenced by, once
//! (as nix does): `linux_like` (Linux, Android) and `bsd_like` (macOS and
//! the BSDs: every system with kqueue and no pidfds).

fn main() {
    println!("cargo:rustc-check-cfg=cfg(linux_like)");
    println!("cargo:rustc-check-cfg=cfg(bsd_like)");
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    match os.as_str() {
        "linux" | "android" => println!("cargo:rustc-cfg=linux_like"),
        "macos" | "freebsd" | "openbsd" | "netbsd" | "dragonfly" => {
            println!("cargo:rustc-cfg=bsd_like")
        }
        _ => {}
    }
}
