//! Compiles every cuda kernel (src/cuda/*.cu: the base module and the attention module for each
//! supported head dim) to PTX with NVRTC on the host — no GPU needed, only libnvrtc on
//! `LD_LIBRARY_PATH` (scripts/gpu/nvrtc-local.sh fetches it from the `nvidia-cuda-nvrtc` wheel).
//! Without libnvrtc the tests fail, naming the script that fetches it (`.ci/run` runs them with it;
//! they exist only in a `--features cuda` build).
//!
//! The tensor-core attention kernels (attention_tc.cu) are also run on the CPU: tests/tc_emu.cpp
//! compiles them unchanged as host C++ with the warp collectives (mma.sync, ldmatrix, shfl)
//! emulated from the PTX ISA's fragment tables and compares against a reference attention (needs a
//! C++20 compiler, `c++` or `$CXX`). The register/spill check needs ptxas 13.0 (the
//! `nvidia-cuda-nvcc` wheel) named by `KILN_PTXAS`, so it is `#[ignore]`d: run it with `--ignored`.
//! The emulation also runs the first tensor-core version (tc, now in dev/cuda/attention_tc1.cu)
//! and checks that tc2 equals it bit for bit.
#![cfg(feature = "cuda")]

use kiln_engine::cuda::{
    attention_kernels, attention_source, compile, ATTN_HEAD_DIMS, BASE_KERNELS, BASE_SOURCE,
    TC2_CVT, TC_HEAD_DIMS,
};

/// Fails (never a silent pass) when libnvrtc cannot be opened.
fn require_nvrtc() {
    // SAFETY: only probes whether the shared library can be opened.
    let ok = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    assert!(
        ok,
        "libnvrtc not found on LD_LIBRARY_PATH: run with LD_LIBRARY_PATH=$(bash scripts/gpu/nvrtc-local.sh)"
    );
}

fn check(ptx: &str, names: &[String]) {
    assert!(ptx.contains(".target sm_90"), "PTX target is not sm_90");
    for name in names {
        assert!(
            ptx.contains(&format!(".entry {name}(")),
            "kernel {name} missing from the PTX"
        );
    }
}

#[test]
fn base_kernels_compile_to_ptx_for_hopper() {
    require_nvrtc();
    let ptx = compile(BASE_SOURCE, 9, 0).unwrap_or_else(|e| panic!("{e}"));
    check(
        &ptx,
        &BASE_KERNELS
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    );
}

#[test]
fn attention_kernels_compile_for_every_head_dim() {
    require_nvrtc();
    // KILN_NVRTC_HEAD_DIMS=64,16 limits the (slow, fully unrolled) set for a quick check.
    let dims: Vec<usize> = match std::env::var("KILN_NVRTC_HEAD_DIMS") {
        Ok(s) => s
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .expect("KILN_NVRTC_HEAD_DIMS: comma-separated ints")
            })
            .collect(),
        Err(_) => ATTN_HEAD_DIMS.to_vec(),
    };
    for hd in dims {
        let ptx =
            compile(&attention_source(hd), 9, 0).unwrap_or_else(|e| panic!("head dim {hd}: {e}"));
        check(&ptx, &attention_kernels(hd));
    }
}

#[test]
fn precision_names_parse_and_bad_ones_are_named() {
    use kiln_engine::cuda::Precision;
    assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
    assert_eq!("tf32".parse::<Precision>().unwrap(), Precision::Tf32);
    assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    let e = "fp8".parse::<Precision>().unwrap_err().to_string();
    assert!(e.contains("fp8"), "{e}");
}

#[test]
fn every_attention_module_names_its_head_dim() {
    for hd in ATTN_HEAD_DIMS {
        let src = attention_source(hd);
        assert!(src.ends_with(&format!("ATTN_INST({hd})\n")));
        for k in attention_kernels(hd)
            .iter()
            .filter(|k| *k != "k_attn_bwd_d" && *k != TC2_CVT)
        {
            assert!(k.ends_with(&format!("_{hd}")), "{k}");
        }
    }
}

/// On a machine without the NVIDIA driver (CI), opening the backend is an error that says what
/// is missing — never a panic or a crash.
#[test]
fn no_driver_is_a_clean_error() {
    use kiln_engine::cuda::{CudaBackend, CudaOptions, Precision};
    match CudaBackend::new(
        0,
        CudaOptions {
            precision: Precision::F32,
        },
    ) {
        Ok(be) => eprintln!("SKIPPED: a CUDA device is present ({})", be.device_name()),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("libcuda not found"), "{msg}");
        }
    }
}

#[test]
fn tc_kernels_exist_exactly_for_their_head_dims() {
    for hd in ATTN_HEAD_DIMS {
        let names = attention_kernels(hd);
        let tc = names.iter().filter(|k| k.starts_with("k_attn_tc_")).count();
        let tc2 = names
            .iter()
            .filter(|k| k.starts_with("k_attn_tc2_"))
            .count();
        let src = attention_source(hd);
        assert!(names.iter().any(|k| k == TC2_CVT), "{names:?}");
        if TC_HEAD_DIMS.contains(&hd) {
            assert_eq!(tc, 0, "{names:?}");
            assert_eq!(tc2, 4, "{names:?}");
            assert!(!src.contains("\nTC_INST("));
            assert!(src.contains(&format!("TC2_INST({hd})")));
        } else {
            assert_eq!(tc, 0, "{names:?}");
            assert_eq!(tc2, 1, "{names:?}");
            assert!(!src.contains("\nTC_INST("));
            assert!(!src.contains("\nTC2_INST("));
        }
    }
}

/// Only the chosen kernels are in the production source (the losing variants are in dev/cuda/).
#[test]
fn only_v2_and_tc2_attention_kernels_are_compiled_into_the_crate() {
    use kiln_engine::cuda::AttnKernel;
    assert_eq!(AttnKernel::V2.name(), "v2");
    assert_eq!(AttnKernel::Tc2.name(), "tc2");
    for hd in ATTN_HEAD_DIMS {
        let src = attention_source(hd);
        for v1 in [
            "k_attn_fwd_",
            "k_attn_bwd_dq_",
            "k_attn_bwd_dkv_",
            "k_attn_tc_",
        ] {
            assert!(!src.contains(v1), "{v1} in the attention source");
        }
    }
}

/// Runs attention_tc.cu's forward, dQ and dK/dV kernels (tc2 with its bf16 conversion, and the
/// first version tc from dev/cuda/attention_tc1.cu)
/// on the CPU (tests/tc_emu.cpp) and checks them against a double-precision reference: the fragment
/// layouts, ldmatrix addressing, masking, partial tiles, GQA, and for tc2 the cp.async pipeline
/// (copies land only at the wait) and the dynamic shared-memory bounds, before any GPU sees them.
#[test]
fn tc_attention_kernels_match_reference_on_cpu() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("tc_emu");
    let built = std::process::Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-pthread"])
        .arg(dir.join("tests/tc_emu.cpp"))
        .arg("-o")
        .arg(&exe)
        .output();
    let built = built.unwrap_or_else(|e| panic!("no C++ compiler `{cxx}` ({e}); set CXX"));
    assert!(
        built.status.success(),
        "compiling tests/tc_emu.cpp:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = std::process::Command::new(&exe).output().unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    eprintln!("{out}");
    assert!(
        run.status.success() && out.contains("TC EMULATION OK"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.ends_with(" ok")).count(),
        45,
        "{out}"
    );
}

/// With KILN_PTXAS=/path/to/ptxas (13.0): the tc2 kernels (and tc2's conversion) assemble
/// for sm_90 without spills.
#[test]
#[ignore = "needs ptxas 13.0: KILN_PTXAS=/path/to/ptxas cargo test … -- --ignored"]
fn tc_kernels_assemble_for_sm90_without_spills() {
    let ptxas = std::env::var("KILN_PTXAS")
        .expect("set KILN_PTXAS to a ptxas 13.0 binary (the nvidia-cuda-nvcc wheel)");
    require_nvrtc();
    let tmp = tempfile::tempdir().unwrap();
    for hd in TC_HEAD_DIMS {
        let src = format!(
            "{}{}\nTC2_INST({hd})\n",
            include_str!("../src/cuda/prelude.cu"),
            include_str!("../src/cuda/attention_tc.cu")
        );
        let ptx = compile(&src, 9, 0).unwrap_or_else(|e| panic!("head dim {hd}: {e}"));
        let f = tmp.path().join(format!("tc{hd}.ptx"));
        std::fs::write(&f, ptx).unwrap();
        let o = std::process::Command::new(&ptxas)
            .args(["-arch=sm_90", "-v"])
            .arg(&f)
            .arg("-o")
            .arg(tmp.path().join(format!("tc{hd}.cubin")))
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&o.stderr).to_string();
        eprintln!("{log}");
        assert!(o.status.success(), "ptxas head dim {hd}: {log}");
        assert_eq!(
            log.matches("0 bytes spill stores, 0 bytes spill loads")
                .count(),
            4,
            "head dim {hd} spills: {log}"
        );
    }
}
