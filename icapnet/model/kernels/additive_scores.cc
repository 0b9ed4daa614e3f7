// Fused Bahdanau scores for training: scores[g, k, r] = sum_a v[a] * tanh(keys[g, r, a] +
// query[g, k, a]), and its gradient. TensorFlow's own ops write the [G, K, R, A] sum, its tanh
// and their gradients to memory at every decoder step (about 15 passes over a tensor of
// batch x 196 x attention-width floats); these kernels keep one row of A floats in registers,
// so a step reads the keys once forward and once backward, and writes their gradient once.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"
#include "unsupported/Eigen/CXX11/Tensor"

using namespace tensorflow;  // NOLINT

REGISTER_OP("IcapnetAdditiveScores")
    .Input("keys: float")   // [G, R, A]
    .Input("query: float")  // [G, K, A]
    .Input("v: float")      // [A]
    .Output("scores: float")  // [G, K, R]
    // False: the caller takes the keys' gradient once per sequence (Python side), so the
    // gradient op need not write a [G, R, A] tensor at every step.
    .Attr("keys_gradient: bool = true")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle keys, query;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &keys));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &query));
      c->set_output(0, c->MakeShape({c->Dim(keys, 0), c->Dim(query, 1), c->Dim(keys, 1)}));
      return OkStatus();
    });

REGISTER_OP("IcapnetAdditiveScoresGrad")
    .Input("keys: float")
    .Input("query: float")
    .Input("v: float")
    .Input("d_scores: float")  // [G, K, R]
    .Output("d_keys: float")   // [G, R, A], or [0] without want_keys
    .Output("d_query: float")  // [G, K, A], or [0] without want_query
    .Output("d_v: float")      // [A], or [0] without want_query
    .Attr("want_keys: bool = true")
    .Attr("want_query: bool = true")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      bool want_keys, want_query;
      TF_RETURN_IF_ERROR(c->GetAttr("want_keys", &want_keys));
      TF_RETURN_IF_ERROR(c->GetAttr("want_query", &want_query));
      c->set_output(0, want_keys ? c->input(0) : c->Vector(0));
      c->set_output(1, want_query ? c->input(1) : c->Vector(0));
      c->set_output(2, want_query ? c->input(2) : c->Vector(0));
      return OkStatus();
    });

namespace {

using Row = Eigen::Map<const Eigen::ArrayXf>;
using MutableRow = Eigen::Map<Eigen::ArrayXf>;

struct Dims {
  int64_t g, k, r, a;
};

Status CheckInputs(OpKernelContext* ctx, Dims* d) {
  const Tensor& keys = ctx->input(0);
  const Tensor& query = ctx->input(1);
  const Tensor& v = ctx->input(2);
  if (keys.dims() != 3 || query.dims() != 3 || v.dims() != 1)
    return errors::InvalidArgument("keys [G, R, A], query [G, K, A] and v [A] expected");
  d->g = keys.dim_size(0);
  d->r = keys.dim_size(1);
  d->a = keys.dim_size(2);
  d->k = query.dim_size(1);
  if (query.dim_size(0) != d->g || query.dim_size(2) != d->a || v.dim_size(0) != d->a)
    return errors::InvalidArgument("keys, query and v disagree in G or A");
  return OkStatus();
}

void ForEachImage(OpKernelContext* ctx, const Dims& d, const std::function<void(int64_t, int64_t)>& work) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads();
  const int64_t cost = d.k * d.r * d.a * 30;  // ~cycles per image: tanh dominates
  Shard(pool->num_threads, pool->workers, d.g, cost, work);
}

class AdditiveScoresOp : public OpKernel {
 public:
  explicit AdditiveScoresOp(OpKernelConstruction* c) : OpKernel(c) {
    bool unused;
    OP_REQUIRES_OK(c, c->GetAttr("keys_gradient", &unused));
  }

  void Compute(OpKernelContext* ctx) override {
    Dims d;
    OP_REQUIRES_OK(ctx, CheckInputs(ctx, &d));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({d.g, d.k, d.r}), &out));
    const float* keys = ctx->input(0).flat<float>().data();
    const float* query = ctx->input(1).flat<float>().data();
    const Row v(ctx->input(2).flat<float>().data(), d.a);
    float* scores = out->flat<float>().data();
    ForEachImage(ctx, d, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        for (int64_t r = 0; r < d.r; ++r) {
          const Row key(keys + (g * d.r + r) * d.a, d.a);
          for (int64_t k = 0; k < d.k; ++k) {
            const Row q(query + (g * d.k + k) * d.a, d.a);
            scores[(g * d.k + k) * d.r + r] = (v * (key + q).tanh()).sum();
          }
        }
      }
    });
  }
};

class AdditiveScoresGradOp : public OpKernel {
 public:
  explicit AdditiveScoresGradOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("want_keys", &want_keys_));
    OP_REQUIRES_OK(c, c->GetAttr("want_query", &want_query_));
  }

  void Compute(OpKernelContext* ctx) override {
    Dims d;
    OP_REQUIRES_OK(ctx, CheckInputs(ctx, &d));
    const Tensor& d_scores_t = ctx->input(3);
    OP_REQUIRES(ctx, d_scores_t.NumElements() == d.g * d.k * d.r,
                errors::InvalidArgument("d_scores must be [G, K, R]"));
    Tensor *d_keys_t = nullptr, *d_query_t = nullptr, *d_v_t = nullptr;
    const TensorShape none({0});
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, want_keys_ ? ctx->input(0).shape() : none,
                                             &d_keys_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, want_query_ ? ctx->input(1).shape() : none,
                                             &d_query_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, want_query_ ? ctx->input(2).shape() : none,
                                             &d_v_t));
    Tensor d_v_parts;  // one row per image, summed after the parallel part
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_FLOAT, TensorShape({d.g, d.a}), &d_v_parts));

    const float* keys = ctx->input(0).flat<float>().data();
    const float* query = ctx->input(1).flat<float>().data();
    const Row v(ctx->input(2).flat<float>().data(), d.a);
    const float* d_scores = d_scores_t.flat<float>().data();
    float* d_keys = d_keys_t->flat<float>().data();
    float* d_query = d_query_t->flat<float>().data();
    float* parts = d_v_parts.flat<float>().data();
    const bool want_keys = want_keys_, want_query = want_query_;
    ForEachImage(ctx, d, [&](int64_t begin, int64_t end) {
      Eigen::ArrayXf tanh_row(d.a), d_pre(d.a), d_key(d.a);
      for (int64_t g = begin; g < end; ++g) {
        MutableRow d_v_row(parts + g * d.a, d.a);
        d_v_row.setZero();
        if (want_query) MutableRow(d_query + g * d.k * d.a, d.k * d.a).setZero();
        for (int64_t r = 0; r < d.r; ++r) {
          const Row key(keys + (g * d.r + r) * d.a, d.a);
          d_key.setZero();
          for (int64_t k = 0; k < d.k; ++k) {
            const float ds = d_scores[(g * d.k + k) * d.r + r];
            if (ds == 0.0f) continue;  // a finished caption's steps (padding)
            const Row q(query + (g * d.k + k) * d.a, d.a);
            tanh_row = (key + q).tanh();
            d_pre = ds * v * (1.0f - tanh_row.square());
            if (want_keys) d_key += d_pre;
            if (want_query) {
              MutableRow(d_query + (g * d.k + k) * d.a, d.a) += d_pre;
              d_v_row += ds * tanh_row;
            }
          }
          if (want_keys) MutableRow(d_keys + (g * d.r + r) * d.a, d.a) = d_key;
        }
      }
    });
    if (!want_query) return;
    MutableRow d_v(d_v_t->flat<float>().data(), d.a);
    d_v.setZero();
    for (int64_t g = 0; g < d.g; ++g) d_v += Row(parts + g * d.a, d.a);
  }

 private:
  bool want_keys_ = true;
  bool want_query_ = true;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("IcapnetAdditiveScores").Device(DEVICE_CPU), AdditiveScoresOp);
REGISTER_KERNEL_BUILDER(Name("IcapnetAdditiveScoresGrad").Device(DEVICE_CPU), AdditiveScoresGradOp);
