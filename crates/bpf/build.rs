//! Compiles the eBPF programs in `bpf/` with clang, links them into one
//! object and generates the libbpf-rs skeleton.

use std::env;
use std::path::PathBuf;

use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

const SOURCES: &[&str] = &[
    "maps.bpf.c",
    "policy.bpf.c", // defines the rule maps: before the objects using them
    "owner.bpf.c",
    "count.bpf.c",
    "lifecycle.bpf.c",
    "scan.bpf.c",
    "packet.bpf.c",
];

fn main() {
    let dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap()).join("bpf");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let clang = env::var("PROCFLOW_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    for entry in std::fs::read_dir(&dir).unwrap() {
        println!("cargo:rerun-if-changed={}", entry.unwrap().path().display());
    }
    println!("cargo:rerun-if-env-changed=PROCFLOW_CLANG");

    // libbpf's own headers (bpf_helpers.h, bpf_core_read.h, ...), as shipped
    // with the libbpf that loads the programs.
    let inc = out.join("include");
    std::fs::create_dir_all(inc.join("bpf")).unwrap();
    for (name, text) in libbpf_rs::libbpf_sys::API_HEADERS.iter() {
        std::fs::write(inc.join("bpf").join(name), text).unwrap();
    }

    let obj = out.join("procflow.bpf.o");
    let mut objs = Vec::new();
    for src in SOURCES {
        let o = out.join(src.replace(".c", ".o"));
        let status = Command::new(&clang)
            .args([
                "-g",
                "-O2",
                "-target",
                "bpf",
                "-D__TARGET_ARCH_x86",
                "-mcpu=v3",
            ])
            .args(["-Wall", "-Wno-unused-function", "-fno-stack-protector"])
            .arg("-I")
            .arg(&dir)
            .arg("-I")
            .arg(&inc)
            .arg("-c")
            .arg(dir.join(src))
            .arg("-o")
            .arg(&o)
            .status()
            .unwrap_or_else(|e| panic!("running {clang} (install clang-19): {e}"));
        assert!(status.success(), "{clang} failed on bpf/{src}");
        objs.push(o);
    }
    // libbpf's own messages say why a link fails: show them in the build log.
    fn to_stderr(_: libbpf_rs::PrintLevel, msg: String) {
        eprint!("{msg}");
    }
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Warn, to_stderr)));
    let mut linker = libbpf_rs::Linker::new(&obj).expect("BPF linker");
    for o in &objs {
        linker.add_file(o).expect("adding object to the BPF linker");
    }
    linker.link().expect("linking the eBPF objects");
    SkeletonBuilder::new()
        .obj(&obj)
        .generate(out.join("procflow.skel.rs"))
        .unwrap_or_else(|e| panic!("generating the skeleton: {e:#}"));
}
