// libtorch's fused AdamW kernel for ferroclip's optimizer (trainer/src/optim/fused.rs).
// tch's generated bindings leave out the ops over tensor lists (`_fused_adamw_`,
// `_foreach_*`); this shim calls it with tensors tch owns (`tensor` is tch's `at::Tensor*`).
#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adamw.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <vector>

typedef at::Tensor *tensor;

static std::vector<at::Tensor> list(const tensor *ptrs, int n) {
    std::vector<at::Tensor> out;
    out.reserve(n);
    for (int i = 0; i < n; i++) out.push_back(*ptrs[i]);
    return out;
}

extern "C" {

// One AdamW step over n parameters with the same coefficients (at::_fused_adamw_): decoupled
// weight decay, moments, bias corrections from `steps` (float, the step already counted), and
// gradients divided by `grad_scale` first when it is not null. Returns null, or an error
// message to free with ferroclip_free_error.
char *ferroclip_fused_adamw(const tensor *params, const tensor *grads, const tensor *exp_avgs,
                            const tensor *exp_avg_sqs, const tensor *steps, int n, double lr,
                            double beta1, double beta2, double weight_decay, double eps,
                            const tensor grad_scale) {
    try {
        std::optional<at::Tensor> scale;
        if (grad_scale != nullptr) scale = *grad_scale;
        at::_fused_adamw_(list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n),
                          {}, list(steps, n), lr, beta1, beta2, weight_decay, eps,
                          /*amsgrad=*/false, /*maximize=*/false, scale, std::nullopt);
        return nullptr;
    } catch (const std::exception &e) {
        return strdup(e.what());
    }
}

void ferroclip_free_error(char *message) { free(message); }
}
