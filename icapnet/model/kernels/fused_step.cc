// Fused CPU kernels of icapnet's training step (icapnet/model/fused_step.py compiles them).
// Bahdanau attention: scores[g, k, r] = sum_a v[a] * tanh(keys[g, r, a] + query[g, k, a]),
// alpha = softmax over r, context = alpha . values, and their gradients. TensorFlow's own ops
// write the [G, K, R, A] sum, its tanh and their gradients to memory at every decoder step
// (about 15 passes over a tensor of batch x 196 x attention-width floats); these kernels keep
// one row of A floats in registers, so a step reads the keys once forward and once backward.
// GRU gates: one op each way instead of ~40 small ones per step.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"
#include "unsupported/Eigen/CXX11/Tensor"

using namespace tensorflow;  // NOLINT

namespace {

// A shape function: output i has the shape of input inputs[i].
std::function<Status(shape_inference::InferenceContext*)> ShapesOf(std::vector<int> inputs) {
  return [inputs](shape_inference::InferenceContext* c) {
    for (size_t i = 0; i < inputs.size(); ++i) c->set_output(i, c->input(inputs[i]));
    return OkStatus();
  };
}

}  // namespace

REGISTER_OP("IcapnetAdditiveAttention")
    .Input("keys: float")     // [G, R, A]
    .Input("query: float")    // [G, K, A]: K captions per image
    .Input("v: float")        // [A]
    .Input("values: float")   // [G, R, E]
    .Input("add_scores: float")   // [G, K, R], added to the scores before the softmax
    .Input("add_context: float")  // [G, K, E], added to the context
    .Output("alpha: float")    // [G, K, R]
    .Output("context: float")  // [G, K, E]
    .SetShapeFn(ShapesOf({4, 5}));

// The gradient with respect to the query, v and the added scores (= the scores' gradient);
// that of the keys and values is the caller's, once per sequence.
REGISTER_OP("IcapnetAdditiveAttentionGrad")
    .Input("keys: float")
    .Input("query: float")
    .Input("v: float")
    .Input("values: float")
    .Input("alpha: float")
    .Input("d_alpha: float")
    .Input("d_context: float")
    .Output("d_query: float")
    .Output("d_v: float")
    .Output("d_scores: float")
    .SetShapeFn(ShapesOf({1, 2, 4}));

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

REGISTER_OP("IcapnetGruGates")
    .Input("x: float")        // [B, 3U]: the input projection (+ input bias), gates z, r, h
    .Input("inner: float")    // [B, 3U]: the state's projection (+ recurrent bias)
    .Input("state: float")    // [B, U]
    .Output("h: float")       // [B, U]
    .SetShapeFn(ShapesOf({2}));

REGISTER_OP("IcapnetGruGatesGrad")
    .Input("x: float")
    .Input("inner: float")
    .Input("state: float")
    .Input("d_h: float")
    .Output("d_x: float")
    .Output("d_inner: float")
    .Output("d_state: float")
    .SetShapeFn(ShapesOf({0, 1, 2}));

namespace {

using Row = Eigen::Map<const Eigen::ArrayXf>;
using MutableRow = Eigen::Map<Eigen::ArrayXf>;

const float* In(OpKernelContext* ctx, int i) { return ctx->input(i).flat<float>().data(); }

// G images, K captions per image, R regions, attention width A, region width E (values).
struct Dims {
  int64_t g, k, r, a, e = 0;
};

// Inputs 0-2 of every attention op: keys [G, R, A], query [G, K, A], v [A].
Status CheckScores(OpKernelContext* ctx, Dims* d) {
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

// The attention ops' inputs: CheckScores', values [G, R, E] (input 3), then [G, K, R] tensors
// and a last [G, K, E] one.
Status CheckAttention(OpKernelContext* ctx, Dims* d) {
  TF_RETURN_IF_ERROR(CheckScores(ctx, d));
  const Tensor& values = ctx->input(3);
  if (values.dims() != 3 || values.dim_size(0) != d->g || values.dim_size(1) != d->r)
    return errors::InvalidArgument("values must be [G, R, E]");
  d->e = values.dim_size(2);
  const int last = ctx->num_inputs() - 1;
  for (int i = 4; i <= last; ++i) {
    if (ctx->input(i).NumElements() != d->g * d->k * (i == last ? d->e : d->r))
      return errors::InvalidArgument("inputs after values must be [G, K, R], the last [G, K, E]");
  }
  return OkStatus();
}

void ForEachImage(OpKernelContext* ctx, const Dims& d,
                  const std::function<void(int64_t, int64_t)>& work) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads();
  const int64_t cost = d.k * d.r * d.a * 30;  // ~cycles per image: tanh dominates
  Shard(pool->num_threads, pool->workers, d.g, cost, work);
}

// Backward of the scores for images [begin, end): d_query / d_v rows (want_query) and d_keys
// (want_keys) from d_scores. d_v is written per image into d_v_parts [G, A].
void ScoresBackward(const Dims& d, const float* keys, const float* query, const Row& v,
                    const float* d_scores, bool want_keys, bool want_query, float* d_keys,
                    float* d_query, float* d_v_parts, int64_t begin, int64_t end) {
  Eigen::ArrayXf tanh_row(d.a), d_pre(d.a), d_key(d.a);
  for (int64_t g = begin; g < end; ++g) {
    MutableRow d_v_row(d_v_parts + g * d.a, d.a);
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
}

void SumParts(const float* parts, int64_t rows, int64_t width, float* out) {
  MutableRow total(out, width);
  total.setZero();
  for (int64_t g = 0; g < rows; ++g) total += Row(parts + g * width, width);
}

class AdditiveAttentionOp : public OpKernel {
 public:
  explicit AdditiveAttentionOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    Dims d;
    OP_REQUIRES_OK(ctx, CheckAttention(ctx, &d));
    const int64_t e = d.e;
    Tensor *alpha_t = nullptr, *context_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({d.g, d.k, d.r}), &alpha_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({d.g, d.k, e}), &context_t));
    const float* keys = In(ctx, 0);
    const float* query = In(ctx, 1);
    const Row v(In(ctx, 2), d.a);
    const float* values = In(ctx, 3);
    const float* add_scores = In(ctx, 4);
    const float* add_context = In(ctx, 5);
    float* alpha = alpha_t->flat<float>().data();
    float* context = context_t->flat<float>().data();
    ForEachImage(ctx, d, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        for (int64_t r = 0; r < d.r; ++r) {
          const Row key(keys + (g * d.r + r) * d.a, d.a);
          for (int64_t k = 0; k < d.k; ++k) {
            const Row q(query + (g * d.k + k) * d.a, d.a);
            const int64_t at = (g * d.k + k) * d.r + r;
            alpha[at] = (v * (key + q).tanh()).sum() + add_scores[at];
          }
        }
        for (int64_t k = 0; k < d.k; ++k) {  // softmax over the regions, then the context
          MutableRow a(alpha + (g * d.k + k) * d.r, d.r);
          a = (a - a.maxCoeff()).exp();
          a /= a.sum();
          MutableRow c(context + (g * d.k + k) * e, e);
          c = Row(add_context + (g * d.k + k) * e, e);
          for (int64_t r = 0; r < d.r; ++r) c += a[r] * Row(values + (g * d.r + r) * e, e);
        }
      }
    });
  }
};

class AdditiveAttentionGradOp : public OpKernel {
 public:
  explicit AdditiveAttentionGradOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    Dims d;
    OP_REQUIRES_OK(ctx, CheckAttention(ctx, &d));
    const int64_t e = d.e;
    Tensor *d_query_t = nullptr, *d_v_t = nullptr, *d_scores_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(1).shape(), &d_query_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ctx->input(2).shape(), &d_v_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, ctx->input(4).shape(), &d_scores_t));
    Tensor parts;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_FLOAT, TensorShape({d.g, d.a}), &parts));
    const float* keys = In(ctx, 0);
    const float* query = In(ctx, 1);
    const Row v(In(ctx, 2), d.a);
    const float* values = In(ctx, 3);
    const float* alpha = In(ctx, 4);
    const float* d_alpha = In(ctx, 5);
    const float* d_context = In(ctx, 6);
    float* d_scores = d_scores_t->flat<float>().data();
    float* d_query = d_query_t->flat<float>().data();
    float* d_v_parts = parts.flat<float>().data();
    ForEachImage(ctx, d, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        for (int64_t k = 0; k < d.k; ++k) {  // through the context and the softmax
          const int64_t row = (g * d.k + k) * d.r;
          const Row dc(d_context + (g * d.k + k) * e, e);
          MutableRow ds(d_scores + row, d.r);
          for (int64_t r = 0; r < d.r; ++r)
            ds[r] = d_alpha[row + r] + (Row(values + (g * d.r + r) * e, e) * dc).sum();
          const Row a(alpha + row, d.r);
          ds = a * (ds - (a * ds).sum());
        }
      }
      ScoresBackward(d, keys, query, v, d_scores, false, true, nullptr, d_query, d_v_parts,
                     begin, end);
    });
    SumParts(d_v_parts, d.g, d.a, d_v_t->flat<float>().data());
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
    OP_REQUIRES_OK(ctx, CheckScores(ctx, &d));
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
    Tensor parts;  // d_v, one row per image, summed after the parallel part
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_FLOAT, TensorShape({d.g, d.a}), &parts));
    const float* keys = In(ctx, 0);
    const float* query = In(ctx, 1);
    const Row v(In(ctx, 2), d.a);
    const float* d_scores = d_scores_t.flat<float>().data();
    float* d_keys = d_keys_t->flat<float>().data();
    float* d_query = d_query_t->flat<float>().data();
    float* d_v_parts = parts.flat<float>().data();
    const bool want_keys = want_keys_, want_query = want_query_;
    ForEachImage(ctx, d, [&](int64_t begin, int64_t end) {
      ScoresBackward(d, keys, query, v, d_scores, want_keys, want_query, d_keys, d_query,
                     d_v_parts, begin, end);
    });
    if (want_query) SumParts(d_v_parts, d.g, d.a, d_v_t->flat<float>().data());
  }

 private:
  bool want_keys_ = true;
  bool want_query_ = true;
};

// Keras' GRUCell (reset_after=True, sigmoid / tanh): z = s(x_z + i_z), r = s(x_r + i_r),
// n = tanh(x_h + r * i_h), h = z * state + (1 - z) * n. TensorFlow runs it as ~15 ops forward
// and ~25 backward per decoder step, each a dispatch in the while loop; here one each.
Status CheckGru(OpKernelContext* ctx, int64_t* rows, int64_t* units) {
  const Tensor& x = ctx->input(0);
  const Tensor& inner = ctx->input(1);
  const Tensor& state = ctx->input(2);
  if (x.dims() != 2 || inner.shape() != x.shape() || state.dims() != 2 ||
      state.dim_size(0) != x.dim_size(0) || x.dim_size(1) != 3 * state.dim_size(1))
    return errors::InvalidArgument("x, inner [B, 3U] and state [B, U] expected");
  *rows = state.dim_size(0);
  *units = state.dim_size(1);
  return OkStatus();
}

void ForEachRow(OpKernelContext* ctx, int64_t rows, int64_t units,
                const std::function<void(int64_t, int64_t)>& work) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads();
  Shard(pool->num_threads, pool->workers, rows, units * 60, work);
}

class GruGatesOp : public OpKernel {
 public:
  explicit GruGatesOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    int64_t rows, units;
    OP_REQUIRES_OK(ctx, CheckGru(ctx, &rows, &units));
    Tensor* h_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(2).shape(), &h_t));
    const float* x = In(ctx, 0);
    const float* inner = In(ctx, 1);
    const float* state = In(ctx, 2);
    float* h = h_t->flat<float>().data();
    ForEachRow(ctx, rows, units, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const float* xb = x + b * 3 * units;
        const float* ib = inner + b * 3 * units;
        const Row s(state + b * units, units);
        const Eigen::ArrayXf z = (Row(xb, units) + Row(ib, units)).logistic();
        const Eigen::ArrayXf r = (Row(xb + units, units) + Row(ib + units, units)).logistic();
        const Eigen::ArrayXf n =
            (Row(xb + 2 * units, units) + r * Row(ib + 2 * units, units)).tanh();
        MutableRow(h + b * units, units) = z * s + (1.0f - z) * n;
      }
    });
  }
};

class GruGatesGradOp : public OpKernel {
 public:
  explicit GruGatesGradOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    int64_t rows, units;
    OP_REQUIRES_OK(ctx, CheckGru(ctx, &rows, &units));
    OP_REQUIRES(ctx, ctx->input(3).shape() == ctx->input(2).shape(),
                errors::InvalidArgument("d_h must be [B, U]"));
    Tensor *d_x_t = nullptr, *d_inner_t = nullptr, *d_state_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(0).shape(), &d_x_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ctx->input(1).shape(), &d_inner_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, ctx->input(2).shape(), &d_state_t));
    const float* x = In(ctx, 0);
    const float* inner = In(ctx, 1);
    const float* state = In(ctx, 2);
    const float* d_h = In(ctx, 3);
    float* d_x = d_x_t->flat<float>().data();
    float* d_inner = d_inner_t->flat<float>().data();
    float* d_state = d_state_t->flat<float>().data();
    ForEachRow(ctx, rows, units, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const float* xb = x + b * 3 * units;
        const float* ib = inner + b * 3 * units;
        const Row s(state + b * units, units), dh(d_h + b * units, units);
        const Row i_h(ib + 2 * units, units);
        const Eigen::ArrayXf z = (Row(xb, units) + Row(ib, units)).logistic();
        const Eigen::ArrayXf r = (Row(xb + units, units) + Row(ib + units, units)).logistic();
        const Eigen::ArrayXf n = (Row(xb + 2 * units, units) + r * i_h).tanh();
        const Eigen::ArrayXf d_z = dh * (s - n) * z * (1.0f - z);
        const Eigen::ArrayXf d_n = dh * (1.0f - z) * (1.0f - n.square());
        const Eigen::ArrayXf d_r = d_n * i_h * r * (1.0f - r);
        float* dxb = d_x + b * 3 * units;
        float* dib = d_inner + b * 3 * units;
        MutableRow(dxb, units) = d_z;
        MutableRow(dib, units) = d_z;
        MutableRow(dxb + units, units) = d_r;
        MutableRow(dib + units, units) = d_r;
        MutableRow(dxb + 2 * units, units) = d_n;
        MutableRow(dib + 2 * units, units) = d_n * r;
        MutableRow(d_state + b * units, units) = dh * z;
      }
    });
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("IcapnetAdditiveAttention").Device(DEVICE_CPU), AdditiveAttentionOp);
REGISTER_KERNEL_BUILDER(Name("IcapnetAdditiveAttentionGrad").Device(DEVICE_CPU),
                        AdditiveAttentionGradOp);
REGISTER_KERNEL_BUILDER(Name("IcapnetAdditiveScoresGrad").Device(DEVICE_CPU), AdditiveScoresGradOp);
REGISTER_KERNEL_BUILDER(Name("IcapnetGruGates").Device(DEVICE_CPU), GruGatesOp);
REGISTER_KERNEL_BUILDER(Name("IcapnetGruGatesGrad").Device(DEVICE_CPU), GruGatesGradOp);
