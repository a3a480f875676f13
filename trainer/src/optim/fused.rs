//! libtorch's fused AdamW kernel (`at::_fused_adamw_`): one pass over each tensor on the CPU,
//! one multi-tensor launch per group on CUDA, where the unfused update runs about ten
//! elementwise kernels per parameter. tch's generated bindings leave out ops over tensor
//! lists, so a small C++ shim (`trainer/csrc/fused_adamw.cpp`, compiled by build.rs) calls it.
//! `optim.fused = true`.

use std::ffi::{c_char, c_int, CStr};

use tch::{Kind, Tensor};
use torch_sys::C_tensor;

pub use super::error::FusedError;

extern "C" {
    fn ferroclip_fused_adamw(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        exp_avgs: *const *mut C_tensor,
        exp_avg_sqs: *const *mut C_tensor,
        steps: *const *mut C_tensor,
        n: c_int,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        grad_scale: *mut C_tensor,
    ) -> *mut c_char;
    fn ferroclip_free_error(message: *mut c_char);
}

/// Tensors updated with the same coefficients: parameters with their gradients and moments.
#[derive(Default)]
pub struct FusedGroup {
    params: Vec<Tensor>,
    grads: Vec<Tensor>,
    exp_avgs: Vec<Tensor>,
    exp_avg_sqs: Vec<Tensor>,
}

impl FusedGroup {
    /// Adds a parameter (or a slice of one) with its gradient and moments, all of one shape.
    /// The kernel walks memory linearly: a gradient that is not contiguous (autograd may
    /// hand back an expanded view) is copied.
    pub fn push(&mut self, param: &Tensor, grad: &Tensor, exp_avg: &Tensor, exp_avg_sq: &Tensor) {
        self.params.push(param.shallow_clone());
        self.grads.push(grad.contiguous());
        self.exp_avgs.push(exp_avg.shallow_clone());
        self.exp_avg_sqs.push(exp_avg_sq.shallow_clone());
    }

    /// Whether no tensor was added.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
}

/// The coefficients of one fused step.
pub struct FusedStep {
    /// 1-based step number (the bias corrections).
    pub step: u64,
    /// Learning rate.
    pub lr: f64,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Gradient multiplier (clipping); 1 = none.
    pub grad_multiplier: f64,
}

impl FusedStep {
    /// Updates `group` in place with decoupled weight decay `weight_decay`.
    pub fn apply(&self, group: &mut FusedGroup, weight_decay: f64) -> Result<(), FusedError> {
        if group.is_empty() {
            return Ok(());
        }
        let device = group.params[0].device();
        // The kernel reads the step count from a float tensor per parameter (the same value).
        let step = Tensor::from(self.step as f32).to_device(device);
        let steps: Vec<Tensor> = group.params.iter().map(|_| step.shallow_clone()).collect();
        // Clipping as the kernel's gradient unscaling: g / (1 / multiplier).
        let mut scale = (self.grad_multiplier != 1.0).then(|| {
            Tensor::from((1.0 / self.grad_multiplier) as f32)
                .to_kind(Kind::Float)
                .to_device(device)
        });
        let ptrs = |ts: &mut Vec<Tensor>| ts.iter_mut().map(|t| t.as_mut_ptr()).collect::<Vec<_>>();
        let (params, grads) = (ptrs(&mut group.params), ptrs(&mut group.grads));
        let (exp_avgs, exp_avg_sqs) = (ptrs(&mut group.exp_avgs), ptrs(&mut group.exp_avg_sqs));
        let mut steps = steps;
        let steps = ptrs(&mut steps);
        let scale_ptr = scale.as_mut().map_or(std::ptr::null_mut(), |t| t.as_mut_ptr());
        // SAFETY: every pointer is a live tch tensor (`at::Tensor*`) owned by `group`, `steps`
        // or `scale`, all alive until the call returns; lists have `params.len()` entries; the
        // shim catches C++ exceptions and returns their message.
        let error = unsafe {
            ferroclip_fused_adamw(
                params.as_ptr(),
                grads.as_ptr(),
                exp_avgs.as_ptr(),
                exp_avg_sqs.as_ptr(),
                steps.as_ptr(),
                params.len() as c_int,
                self.lr,
                self.beta1,
                self.beta2,
                weight_decay,
                self.eps,
                scale_ptr,
            )
        };
        if error.is_null() {
            return Ok(());
        }
        // SAFETY: a NUL-terminated string from strdup, freed once by the shim's free.
        let message = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
        unsafe { ferroclip_free_error(error) };
        Err(FusedError(message))
    }
}
