/* The elementwise parts of the stacked MLP's training step, fused (see actlab/native.py).

   Between its GEMMs, a step of the hand-written MLP (actlab/mlp_step.py) runs some fifty
   small kernels: per activation group the activation and its derivative, per layer the
   bias gradient, and the cross-entropy's log-softmax, loss, gradient and accuracy count.
   On a CPU each costs a few microseconds of dispatch for under a microsecond of
   arithmetic. Here they are three functions, one pass each:

     act_forward      h = f(z), every member with its own activation
     act_backward     dz = dh * f'(z) and db = sum over the batch of dz
     xent_forward_backward
                      per member: loss = mean_b (logsumexp(x_b) - x_b[t_b]),
                      d = (softmax(x) - onehot(t)) / B, db = sum_b d, correct = hits

   Layouts are feature-major, as actlab.models lays them out: member k's activations are
   the (units, B) block at k * units * B. Every formula is the one of torch's own kernel
   (aten's forward and *_backward ops, NaN kept where torch keeps it), except where torch's
   cancels: gelu takes the normal CDF from erfc, not 1 + erf, and gelu_tanh is x sigmoid(2u),
   not x (1 + tanh u) / 2. exp, log and tanh are Cephes's single-precision approximations
   (S. L. Moshier, Cephes Math Library, 1984-1992), erfc Numerical Recipes' fit, all written
   without branches so that the compiler vectorises them: within 2.5 ulp of float64 as
   torch's are (gelu: 7 ulp, mish 3.5), tested in tests/engine/test_native.py.
   Compiled with -ffp-contract=off and no -ffast-math: the results are IEEE, the same on
   every x86 machine, whatever width the compiler vectorises to. */

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Activation codes: the order of actlab.native.CODES. A member whose code is negative is
   left untouched (its activation runs as torch ops, actlab/mlp_step.py). */
enum {
    LINEAR = 0, RELU = 1, LEAKY_RELU = 2, HARDTANH = 3, SIGMOID = 4, TANH = 5, SILU = 6,
    ELU = 7, GELU = 8, GELU_TANH = 9, HARDSIGMOID = 10, HARDSWISH = 11, SOFTPLUS = 12,
    MISH = 13, SOFTSHRINK = 14, HARDSHRINK = 15
};

/* SELU's constants as torch.selu uses them (elu with these), and GELU's. */
#define SELU_ALPHA 1.6732632423543772848170429916717f
#define SELU_SCALE 1.0507009873554804934193349852946f
#define SQRT1_2 0.70710678118654752440f        /* 1 / sqrt(2) */
#define INV_SQRT_2PI 0.39894228040143267794f   /* 1 / sqrt(2 pi) */
#define SQRT_2_PI 0.79788456080286535588f      /* sqrt(2 / pi) */
#define GELU_KAPPA 0.044715f


/* exp(x) for float: Cephes expf. x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its
   degree-6 minimax polynomial, times 2^n built in the exponent bits (2^127 * 2 for n = 128,
   near the top of the range). Above 88.72 the result is +inf; below -87.34, where it
   would be a denormal, 0; NaN stays NaN. */
static inline float exp_f(float x) {
    const float hi = 88.72283935546875f, lo = -87.3365447505531f;
    float c = x > hi ? hi : (x < lo ? lo : x);
    float n = floorf(c * 1.44269504088896341f + 0.5f);
    float r = c - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float z = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * z + r + 1.0f;
    float top = n > 127.0f ? 2.0f : 1.0f;
    int32_t bits = ((int32_t)(n > 127.0f ? 127.0f : n) + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float y = p * scale * top;
    y = x > hi ? INFINITY : y;
    y = x < lo ? 0.0f : y;
    return x != x ? x : y;
}

/* tanh(x) for float: Cephes tanhf. An odd polynomial below |x| = 0.625, else
   1 - 2 / (exp(2|x|) + 1) with the sign of x. */
static inline float tanh_f(float x) {
    float a = fabsf(x);
    float big = 1.0f - 2.0f / (exp_f(a + a) + 1.0f);
    big = x < 0.0f ? -big : big;
    float z = x * x;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    float small = p * z * x + x;
    return a > 0.625f ? big : small; /* NaN: the small branch, NaN */
}

static inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

/* exp(x) - 1 for float: below |x| = 0.5 its Taylor polynomial to x^8 (truncation under
   2e-9 relative), else exp_f(x) - 1, whose cancellation costs at most 1.5x there. */
static inline float expm1_f(float x) {
    float p = 1.0f / 40320.0f;
    p = p * x + 1.0f / 5040.0f;
    p = p * x + 1.0f / 720.0f;
    p = p * x + 1.0f / 120.0f;
    p = p * x + 1.0f / 24.0f;
    p = p * x + 1.0f / 6.0f;
    p = p * x + 0.5f;
    float small = (p * x) * x + x;
    return fabsf(x) < 0.5f ? small : exp_f(x) - 1.0f; /* NaN: exp_f(NaN) - 1, NaN */
}

/* log(u) for float u >= 1 (and +inf, NaN): Cephes logf. u = m 2^e with m in
   [sqrt(1/2), sqrt(2)), log(m) by its degree-9 polynomial in m - 1, e ln 2 added in two
   parts. */
static inline float log_f(float u) {
    int32_t bits;
    memcpy(&bits, &u, sizeof bits);
    float e = (float)(((bits >> 23) & 0xff) - 126);
    bits = (bits & (int32_t)0x807fffff) | 0x3f000000; /* the mantissa in [0.5, 1) */
    float m;
    memcpy(&m, &bits, sizeof m);
    int low = m < 0.707106781186547524f;
    e = low ? e - 1.0f : e;
    float x = low ? m + m - 1.0f : m - 1.0f;
    float z = x * x;
    float y = 7.0376836292e-2f;
    y = y * x - 1.1514610310e-1f;
    y = y * x + 1.1676998740e-1f;
    y = y * x - 1.2420140846e-1f;
    y = y * x + 1.4249322787e-1f;
    y = y * x - 1.6668057665e-1f;
    y = y * x + 2.0000714765e-1f;
    y = y * x - 2.4999993993e-1f;
    y = y * x + 3.3333331174e-1f;
    y = y * x * z;
    y = y + e * -2.12194440e-4f;
    y = y - 0.5f * z;
    float r = x + y + e * 0.693359375f;
    r = u == INFINITY ? u : r;
    return u != u ? u : r;
}

/* log(1 + x) for float x >= 0: log(u) x / (u - 1), u = 1 + x, which cancels the rounding
   of u (Goldberg 1991, "What every computer scientist should know about floating-point
   arithmetic", thm. 4); x itself where u rounds to 1. */
static inline float log1p_f(float x) {
    float u = 1.0f + x;
    float r = log_f(u) * (x / (u - 1.0f));
    r = u == INFINITY ? u : r;
    return u == 1.0f ? x : r;
}

/* The standard normal CDF, Phi(x) = erfc(-x / sqrt 2) / 2, with erfc from the Chebyshev
   fit of Numerical Recipes (Press et al. 1992, 6.2, "erfcc": erfc(z) = t exp(-z^2 + P(t)),
   t = 1 / (1 + z/2), fractional error below 1.2e-7), accurate in both tails where
   1 + erf would cancel. Its exp(-z^2) is taken from x itself, z^2 = x^2 / 2, as
   exp(-s^2 / 2) exp((s - a)(s + a) / 2 + P), a = |x|, s = a with its 12 low mantissa bits
   cleared, so that s^2 is exact (fdlibm's erfc splits the same way): rounding z = x / sqrt 2
   or z^2 would cost up to 2 z^2 ulp of the result. */
static inline float phi_f(float x) {
    float a = fabsf(x);
    float t = 1.0f / (1.0f + 0.5f * (a * SQRT1_2));
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    int32_t bits;
    memcpy(&bits, &a, sizeof bits);
    bits &= (int32_t)0xfffff000;
    float s;
    memcpy(&s, &bits, sizeof s);
    float tail = t * exp_f(-0.5f * (s * s)) * exp_f(0.5f * ((s - a) * (s + a)) + p);
    return x > 0.0f ? 1.0f - 0.5f * tail : 0.5f * tail; /* erfc(-z) = 2 - erfc(z) */
}

/* One row: h = f(z) for n values. p0, p1, p2: the activation's parameters. */
static __attribute__((noinline)) void forward_row(int code, float p0, float p1, float p2,
                                                  const float *restrict z, float *restrict h,
                                                  int64_t n) {
    switch (code) {
    case RELU: /* torch.relu (clamp_min): NaN stays NaN */
        for (int64_t i = 0; i < n; i++) h[i] = z[i] < 0.0f ? 0.0f : z[i];
        break;
    case LEAKY_RELU: /* x > 0 ? x : x * slope */
        for (int64_t i = 0; i < n; i++) h[i] = z[i] > 0.0f ? z[i] : z[i] * p0;
        break;
    case HARDTANH: /* clamp to [min_val, max_val] (relu6: [0, 6]) */
        for (int64_t i = 0; i < n; i++) h[i] = z[i] < p0 ? p0 : (z[i] > p1 ? p1 : z[i]);
        break;
    case SIGMOID:
        for (int64_t i = 0; i < n; i++) h[i] = sigmoid_f(z[i]);
        break;
    case TANH:
        for (int64_t i = 0; i < n; i++) h[i] = tanh_f(z[i]);
        break;
    case SILU: /* x * sigmoid(x) */
        for (int64_t i = 0; i < n; i++) h[i] = z[i] / (1.0f + exp_f(-z[i]));
        break;
    case ELU: /* elu, selu, celu, as aten.elu: x > 0 ? scale x : alpha scale (exp(x c) - 1);
                 p0 = alpha * scale, p1 = c (input scale: 1, or celu's 1 / alpha), p2 = scale */
        for (int64_t i = 0; i < n; i++)
            h[i] = z[i] <= 0.0f ? expm1_f(z[i] * p1) * p0 : z[i] * p2;
        break;
    case GELU: /* x Phi(x) */
        for (int64_t i = 0; i < n; i++) h[i] = z[i] * phi_f(z[i]);
        break;
    case GELU_TANH: /* x (1 + tanh(u)) / 2, u = sqrt(2/pi) (x + 0.044715 x^3), taken as
                       x sigmoid(2u), which does not cancel where tanh(u) nears -1 */
        for (int64_t i = 0; i < n; i++) {
            float x = z[i];
            h[i] = x * sigmoid_f(2.0f * SQRT_2_PI * (x + GELU_KAPPA * x * x * x));
        }
        break;
    case HARDSIGMOID: /* min(max(x + 3, 0), 6) / 6 */
        for (int64_t i = 0; i < n; i++) {
            float c = z[i] + 3.0f;
            c = c < 0.0f ? 0.0f : c;
            h[i] = (c > 6.0f ? 6.0f : c) / 6.0f;
        }
        break;
    case HARDSWISH: /* x min(max(x + 3, 0), 6) / 6 */
        for (int64_t i = 0; i < n; i++) {
            float c = z[i] + 3.0f;
            c = c < 0.0f ? 0.0f : c;
            h[i] = z[i] * (c > 6.0f ? 6.0f : c) / 6.0f;
        }
        break;
    case SOFTPLUS: /* x beta > threshold ? x : log(1 + exp(x beta)) / beta; p0 = beta, p1 =
                      threshold */
        for (int64_t i = 0; i < n; i++)
            h[i] = z[i] * p0 > p1 ? z[i] : log1p_f(exp_f(z[i] * p0)) / p0;
        break;
    case MISH: /* x tanh(softplus(x)) */
        for (int64_t i = 0; i < n; i++) h[i] = z[i] * tanh_f(log1p_f(exp_f(z[i])));
        break;
    case SOFTSHRINK: /* x > l ? x - l : x < -l ? x + l : 0 (x * 0: NaN and -0 kept); p0 = l */
        for (int64_t i = 0; i < n; i++)
            h[i] = z[i] > p0 ? z[i] - p0 : (z[i] < -p0 ? z[i] + p0 : z[i] * 0.0f);
        break;
    case HARDSHRINK: /* -l <= x <= l ? 0 : x */
        for (int64_t i = 0; i < n; i++) h[i] = (z[i] >= -p0 && z[i] <= p0) ? 0.0f : z[i];
        break;
    default: /* LINEAR */
        memcpy(h, z, (size_t)n * sizeof *h);
    }
}

/* One row: dz = dh * f'(z) for n values (y = f(z)); returns the sum of dz, in order. */
static __attribute__((noinline)) float backward_row(int code, float p0, float p1, float p2,
                                                    const float *restrict dh,
                                                    const float *restrict z,
                                                    const float *restrict y, float *restrict dz,
                                                    int64_t n) {
    switch (code) {
    case RELU: /* threshold_backward(dh, y, 0) */
        for (int64_t i = 0; i < n; i++) dz[i] = y[i] <= 0.0f ? 0.0f : dh[i];
        break;
    case LEAKY_RELU: /* leaky_relu_backward(dh, z, slope) */
        for (int64_t i = 0; i < n; i++) dz[i] = z[i] > 0.0f ? dh[i] : dh[i] * p0;
        break;
    case HARDTANH: /* hardtanh_backward(dh, z, min_val, max_val) */
        for (int64_t i = 0; i < n; i++) dz[i] = (z[i] <= p0 || z[i] >= p1) ? 0.0f : dh[i];
        break;
    case SIGMOID: /* sigmoid_backward(dh, y) = dh * (1 - y) * y */
        for (int64_t i = 0; i < n; i++) dz[i] = dh[i] * (1.0f - y[i]) * y[i];
        break;
    case TANH: /* tanh_backward(dh, y) = dh * (1 - y^2) */
        for (int64_t i = 0; i < n; i++) dz[i] = dh[i] * (1.0f - y[i] * y[i]);
        break;
    case SILU: { /* silu_backward: dh * s * (1 + z * (1 - s)), s = sigmoid(z) */
        for (int64_t i = 0; i < n; i++) {
            float s = sigmoid_f(z[i]);
            dz[i] = dh[i] * s * (1.0f + z[i] * (1.0f - s));
        }
        break;
    }
    case ELU: /* elu_backward: x > 0 ? dh scale : dh c (alpha scale) exp(x c) */
        for (int64_t i = 0; i < n; i++)
            dz[i] = z[i] <= 0.0f ? dh[i] * p1 * p0 * exp_f(z[i] * p1) : dh[i] * p2;
        break;
    case GELU: /* dh (Phi(x) + x phi(x)) */
        for (int64_t i = 0; i < n; i++) {
            float x = z[i];
            dz[i] = dh[i] * (phi_f(x) + x * (INV_SQRT_2PI * exp_f(-0.5f * x * x)));
        }
        break;
    case GELU_TANH: { /* d/dx x s = s + 2 x s (1 - s) u', s = sigmoid(2u): (1 + t) / 2 = s,
                         1 - t^2 = 4 s (1 - s) */
        for (int64_t i = 0; i < n; i++) {
            float x = z[i];
            float s = sigmoid_f(2.0f * SQRT_2_PI * (x + GELU_KAPPA * x * x * x));
            float du = SQRT_2_PI * (1.0f + 3.0f * GELU_KAPPA * x * x);
            dz[i] = dh[i] * (s + 2.0f * x * s * (1.0f - s) * du);
        }
        break;
    }
    case HARDSIGMOID: /* hardsigmoid_backward: -3 < x < 3 ? dh / 6 : 0 */
        for (int64_t i = 0; i < n; i++)
            dz[i] = (z[i] > -3.0f && z[i] < 3.0f) ? dh[i] * (1.0f / 6.0f) : 0.0f;
        break;
    case HARDSWISH: /* hardswish_backward: x < -3: 0; x <= 3: dh (x / 3 + 1/2); else dh */
        for (int64_t i = 0; i < n; i++)
            dz[i] = z[i] < -3.0f ? 0.0f : (z[i] <= 3.0f ? dh[i] * (z[i] / 3.0f + 0.5f) : dh[i]);
        break;
    case SOFTPLUS: { /* softplus_backward: x beta > threshold ? dh : dh e / (e + 1), e =
                        exp(x beta) */
        for (int64_t i = 0; i < n; i++) {
            float e = exp_f(z[i] * p0);
            dz[i] = z[i] * p0 > p1 ? dh[i] : dh[i] * e / (e + 1.0f);
        }
        break;
    }
    case MISH: { /* mish_backward: dh (t + x s (1 - t^2)), s = sigmoid(x), t = tanh(softplus) */
        for (int64_t i = 0; i < n; i++) {
            float x = z[i];
            float s = sigmoid_f(x);
            float t = tanh_f(log1p_f(exp_f(x)));
            dz[i] = dh[i] * (t + x * s * (1.0f - t * t));
        }
        break;
    }
    case SOFTSHRINK: /* softshrink_backward and hardshrink_backward: -l <= x <= l ? 0 : dh */
    case HARDSHRINK:
        for (int64_t i = 0; i < n; i++) dz[i] = (z[i] >= -p0 && z[i] <= p0) ? 0.0f : dh[i];
        break;
    default: /* LINEAR */
        memcpy(dz, dh, (size_t)n * sizeof *dz);
    }
    /* Eight partial sums (the compiler keeps float sums in order, unvectorised). */
    float part[8] = {0.0f};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) part[j] += dz[i + j];
    float sum = 0.0f;
    for (; i < n; i++) sum += dz[i];
    for (int j = 0; j < 8; j++) sum += part[j];
    return sum;
}

/* h = f(z) for K members of `units` x B values each; member k's activation is codes[k]
   with parameters params[3k .. 3k + 2]. */
void act_forward(int64_t K, int64_t units, int64_t B, const int32_t *codes, const float *params,
                 const float *z, float *h, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t r = 0; r < K * units; r++) {
        int64_t k = r / units;
        if (codes[k] >= 0)
            forward_row(codes[k], params[3 * k], params[3 * k + 1], params[3 * k + 2], z + r * B,
                        h + r * B, B);
    }
}

/* dz = dh * f'(z) and db[k, u] = sum_b dz[k, u, b], for the layout of act_forward. */
void act_backward(int64_t K, int64_t units, int64_t B, const int32_t *codes,
                  const float *params, const float *dh, const float *z, const float *h,
                  float *dz, float *db, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t r = 0; r < K * units; r++) {
        int64_t k = r / units, o = r * B;
        if (codes[k] >= 0)
            db[r] = backward_row(codes[k], params[3 * k], params[3 * k + 1], params[3 * k + 2],
                                 dh + o, z + o, h + o, dz + o, B);
    }
}

/* Softmax cross-entropy of K members' logits x (K, C, B), targets t (K, B), B <= 4096:
   losses[k] = mean_b (m_b + log sum_c exp(x_cb - m_b) - x_{t_b, b}), m_b = max_c x_cb;
   d = (softmax - onehot(t)) / B, db[k, c] = sum_b d[k, c, b];
   correct[k] = #{b : the first largest x_cb is at c = t_b}. */
void xent_forward_backward(int64_t K, int64_t C, int64_t B, const float *x, const int64_t *t,
                           float *d, float *db, float *losses, int64_t *correct, int threads) {
    float inv_b = 1.0f / (float)B;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t k = 0; k < K; k++) {
        const float *xk = x + k * C * B;
        const int64_t *tk = t + k * B;
        float *dk = d + k * C * B;
        float m[4096], s[4096];
        int64_t arg[4096];
        for (int64_t b = 0; b < B; b++) {
            m[b] = xk[b];
            arg[b] = 0;
        }
        for (int64_t c = 1; c < C; c++)
            for (int64_t b = 0; b < B; b++) {
                float v = xk[c * B + b];
                int larger = v > m[b] || (v != v && m[b] == m[b]); /* NaN wins, as max */
                arg[b] = larger ? c : arg[b];
                m[b] = larger ? v : m[b];
            }
        for (int64_t b = 0; b < B; b++) s[b] = 0.0f;
        for (int64_t c = 0; c < C; c++)
            for (int64_t b = 0; b < B; b++) {
                float e = exp_f(xk[c * B + b] - m[b]);
                dk[c * B + b] = e;
                s[b] += e;
            }
        double loss = 0.0;
        int64_t hits = 0;
        for (int64_t b = 0; b < B; b++) {
            /* Labels are checked when the data is loaded; one out of range would make the
               member's loss NaN (it diverges) rather than read outside its logits. */
            int64_t target = tk[b];
            int valid = target >= 0 && target < C;
            double picked = (double)xk[(valid ? target : 0) * B + b];
            loss += valid ? (double)m[b] + log((double)s[b]) - picked : NAN;
            hits += arg[b] == target;
            s[b] = 1.0f / s[b];
        }
        for (int64_t c = 0; c < C; c++) {
            float sum = 0.0f;
            for (int64_t b = 0; b < B; b++) {
                float g = dk[c * B + b] * s[b] - (tk[b] == c ? 1.0f : 0.0f);
                g *= inv_b;
                dk[c * B + b] = g;
                sum += g;
            }
            db[k * C + c] = sum;
        }
        losses[k] = (float)(loss / (double)B);
        correct[k] = hits;
    }
}
