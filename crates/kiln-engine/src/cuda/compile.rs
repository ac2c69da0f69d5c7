//! NVRTC: the kernel sources (`prelude.cu` + `kernels.cu`; the attention templates per head
//! dim), their entry points, compilation to PTX for the device's compute capability, and the PTX
//! cache (`KILN_CUDA_CACHE`, else `$HOME/.cache/kiln-cuda`: the unrolled attention kernels take
//! NVRTC tens of seconds, so each source is compiled once per machine).

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use super::*;

/// CUDA C of every kernel but training attention (prelude + kernels.cu).
pub const BASE_SOURCE: &str = concat!(include_str!("prelude.cu"), include_str!("kernels.cu"));

/// CUDA C of the flash-attention templates (prelude + attention.cu); see [`attention_source`].
pub const ATTN_SOURCE: &str = concat!(
    include_str!("prelude.cu"),
    include_str!("attention.cu"),
    include_str!("attention_tc.cu")
);

/// Head dims with a flash-attention instantiation (each compiled on first use).
pub const ATTN_HEAD_DIMS: [usize; 5] = [8, 16, 32, 64, 128];

/// Entry points of [`BASE_SOURCE`].
pub const BASE_KERNELS: [&str; 29] = [
    "k_fill",
    "k_axpy",
    "k_scale",
    "k_sum_squares",
    "k_add_bias",
    "k_col_grads",
    "k_col_sum_bf16",
    "k_col_sum_v4",
    "k_embed_fwd",
    "k_embed_bwd",
    "k_norm_fwd",
    "k_norm_bwd_dx",
    "k_norm_fwd_v4",
    "k_norm_bwd_v4",
    "k_act_fwd",
    "k_act_bwd",
    "k_qk_prep_fwd",
    "k_qk_prep_bwd",
    "k_kv_append",
    "k_attn_cached",
    "k_kv_append_rows",
    "k_attn_rows",
    "k_embed_rows",
    "k_cross_entropy",
    "k_cross_entropy_bf16",
    "k_adamw",
    "k_to_bf16",
    "k_from_bf16",
    "k_adamw_groups",
];

/// The attention module's source for head dim `hd`.
pub fn attention_source(hd: usize) -> String {
    let tc = if TC_HEAD_DIMS.contains(&hd) {
        format!("TC2_INST({hd})\n")
    } else {
        String::new()
    };
    format!("{ATTN_SOURCE}\n{tc}ATTN_INST({hd})\n")
}

/// Entry points of [`attention_source`]`(hd)`.
pub fn attention_kernels(hd: usize) -> Vec<String> {
    let mut v = vec![
        "k_attn_bwd_d".to_string(),
        format!("k_attn2_fwd_{hd}"),
        format!("k_attn2_bwd_dq_{hd}"),
        format!("k_attn2_bwd_dkv_{hd}"),
        TC2_CVT.to_string(),
    ];
    if TC_HEAD_DIMS.contains(&hd) {
        for k in ["fwd", "bwd_dq", "bwd_dkv"] {
            v.push(format!("k_attn_tc2_{k}_{hd}"));
        }
    }
    v
}

/// The tc2 f32 → bf16 conversion kernel (in every attention module; not per head dim).
pub const TC2_CVT: &str = "k_attn_tc2_cvt";

/// Compile CUDA C to PTX for `compute_{major}{minor}` (needs only libnvrtc).
pub fn compile(src: &str, major: i32, minor: i32) -> Result<String, EngineError> {
    let opts = CompileOptions {
        options: vec![
            format!("--gpu-architecture=compute_{major}{minor}"),
            "--std=c++17".into(),
        ],
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(src, opts).map_err(|e| {
        EngineError::Backend(format!("NVRTC compile of the cuda kernels failed: {e}"))
    })?;
    Ok(ptx.to_src())
}

/// The PTX cache folder: `KILN_CUDA_CACHE`, else `$HOME/.cache/kiln-cuda` (None: no cache).
pub(super) fn cache_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("KILN_CUDA_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache/kiln-cuda"))
        })
}

/// PTX for `src` on compute capability `cc`, from the cache (keyed by a hash of the source and
/// arch) or compiled with NVRTC and stored (atomically). The fully unrolled attention kernels take
/// NVRTC tens of seconds, so a cache filled once (`cuda_check ptx-cache DIR` needs no GPU) saves
/// that on every later start.
pub fn cached_ptx(src: &str, cc: (i32, i32)) -> Result<String, EngineError> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    src.hash(&mut h);
    cc.hash(&mut h);
    let file =
        cache_dir().map(|d| d.join(format!("kiln-{:016x}-sm{}{}.ptx", h.finish(), cc.0, cc.1)));
    if let Some(ptx) = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
        return Ok(ptx);
    }
    let ptx = std::panic::catch_unwind(|| compile(src, cc.0, cc.1)).map_err(|_| {
        EngineError::Backend(
            "cuda: could not load libnvrtc (add the CUDA toolkit's lib64 to LD_LIBRARY_PATH)"
                .into(),
        )
    })??;
    if let Some(f) = file {
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        let ok = f
            .parent()
            .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            && std::fs::write(&tmp, &ptx).is_ok()
            && std::fs::rename(&tmp, &f).is_ok();
        if !ok {
            tracing::warn!("cuda: could not store PTX cache file {}", f.display());
        }
    }
    Ok(ptx)
}

/// Compile `src` with NVRTC, load it, and look up `names`.
pub(super) fn load_module(
    ctx: &Arc<CudaContext>,
    src: &str,
    cc: (i32, i32),
    names: &[String],
) -> Result<HashMap<String, CudaFunction>, EngineError> {
    let ptx = cached_ptx(src, cc)?;
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .map_err(|e| derr("load module", e))?;
    let mut funcs = HashMap::new();
    for n in names {
        let f = module
            .load_function(n)
            .map_err(|e| derr(&format!("load kernel {n}"), e))?;
        funcs.insert(n.clone(), f);
    }
    Ok(funcs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry point defined in kernels.cu is loaded, and every loaded name is defined: a kernel
    /// missing from [`BASE_KERNELS`] fails only on a GPU, at its first launch.
    #[test]
    fn base_kernels_list_every_entry_point() {
        let defined: Vec<&str> = BASE_SOURCE
            .split("extern \"C\" __global__ void ")
            .skip(1)
            .map(|rest| {
                // past an optional `__launch_bounds__(N)`
                let rest = match rest.strip_prefix("__launch_bounds__(") {
                    Some(r) => r.split_once(')').map_or("", |(_, after)| after),
                    None => rest,
                };
                rest.split('(').next().unwrap_or("").trim()
            })
            .collect();
        let mut listed: Vec<&str> = BASE_KERNELS.to_vec();
        let mut found = defined.clone();
        listed.sort_unstable();
        found.sort_unstable();
        assert_eq!(found, listed, "kernels.cu entry points vs BASE_KERNELS");
    }
}
