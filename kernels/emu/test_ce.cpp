// The fused mixup cross-entropy kernels (kernels/mixup_ce.cu: ce_warp, ce_block with and without
// shared memory, ce_online) on the host, with the launch configurations the host chooses, against
// losses and gradients computed here in f64 from /work/shared/REFERENCE.md:
//   t_c = (1-eps)(lam [c=a] + (1-lam) [c=b]) + eps/C
//   L   = lse - sum_c t_c z_c,  grad_c = (softmax_c - t_c) * upstream * (1/B for Mean)
// Every dtype, forward only and forward + backward (gradient to another buffer at the same or a
// different 16-byte offset, or in place), Mean / Sum / None, host scalar / device scalar /
// per-sample upstream, logits views at odd offsets, huge logits, out-of-range labels, every
// strategy boundary, and the same launch in natural, reversed and shuffled block (and thread)
// orders, whose outputs must agree bit for bit (the reduced loss is meant to be deterministic).
// Masked classes (-inf or the dtype's minimum, as trainers write them) follow REFERENCE.md's
// rules, here as in the kernels: a term whose weight is exactly 0 is left out (0 * -inf is not
// NaN but nothing), so the expected loss is finite unless a class with weight is -inf (+inf) or
// the row has no finite maximum / a NaN (NaN); where it is finite the kernel's must be too.
#include "check.h"

#include <chrono>

#include "../common.cuh"
#define MIXUP_ALL 1
#include "../mixup_ce.cu"

namespace {

constexpr double U = 0x1p-24;    // f32 unit roundoff
constexpr double EX2 = 0x1p-22;  // relative error of one ex2.approx.ftz.f32 on the device

enum Mode { FWD, GRAD, GRAD_SHIFTED, IN_PLACE };
const char* mode_name(Mode m) {
    switch (m) {
        case FWD: return "forward";
        case GRAD: return "grad";
        case GRAD_SHIFTED: return "grad-at-other-offset";
        default: return "in-place";
    }
}
enum Data { NORMAL, HUGE, MASKED };

// One row of a masked-class case (`mask_rows`): its label, partner and lam, and the classes
// whose logits are replaced by -inf (kind 0), the dtype's minimum (kind 1), both alternately
// (kind 2), NaN (kind 3), or the minimum except the first masked class, which gets 0.88 times
// it (kind 4) or half of it (kind 5).
struct MaskRow {
    uint32_t label = 0, partner = 0;
    float lam = 1.0f;
    int kind = 0;
    std::vector<uint64_t> masked;
};

struct Device {
    const char* name;
    uint32_t optin;  // CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
};
const Device H100{"H100", 232448}, A100{"A100", 166912}, L40{"L40", 101376}, T4{"T4", 65536};

struct Case {
    uint64_t C = 1;
    uint32_t B = 1;
    Device dev = H100;
    Mode mode = GRAD;
    int reduction = 0;  // 0 Mean, 1 Sum, 2 None
    int up_kind = 0;    // 0 host scalar, 1 device scalar, 2 per sample
    float up = 1.0f, eps = 0.1f;
    size_t zoff = 0, goff = 0;  // element offsets of the logits and gradient views
    Data data = NORMAL;
    bool bad_labels = false;
    bool orders = false;      // also reversed and shuffled orders, compared bit for bit
    uint32_t force_grid = 0;  // 0: the host's grid; else fewer blocks (grid-stride loops)
    uint64_t seed = 1;
    std::vector<MaskRow> rows;  // when not empty: B rows with these labels, plan and masks
};

template <class K>
struct Entry;
template <>
struct Entry<F32> {
    static void warp(const CeArgs& g) { ce_warp_f32(g); }
    static void block(const CeArgs& g) { ce_block_f32(g); }
    static void online(const CeArgs& g) { ce_online_f32(g); }
};
template <>
struct Entry<F16> {
    static void warp(const CeArgs& g) { ce_warp_f16(g); }
    static void block(const CeArgs& g) { ce_block_f16(g); }
    static void online(const CeArgs& g) { ce_online_f16(g); }
};
template <>
struct Entry<BF16> {
    static void warp(const CeArgs& g) { ce_warp_bf16(g); }
    static void block(const CeArgs& g) { ce_block_bf16(g); }
    static void online(const CeArgs& g) { ce_online_bf16(g); }
};

// The inputs of one case, as stored bits.
template <class H>
struct Inputs {
    std::vector<typename H::B> z;  // [B, C]
    std::vector<uint32_t> labels;
    std::vector<PlanEntry> plan;
    std::vector<float> up;  // [1] or [B] for a device upstream
};

// What one launch produced.
template <class H>
struct Outputs {
    bool ok = true;
    float loss = 0;
    std::vector<float> losses;
    std::vector<typename H::B> grad;     // [B, C] (the logits buffer when in place)
    std::vector<typename H::B> before;   // elements of the gradient buffer before its view
    std::vector<typename H::B> logits;   // the logits buffer afterwards, whole (offset included)
    uint32_t flags[2] = {0, 0};
};

// The most negative finite value of the storage type (`finfo(dtype).min`).
template <class H>
typename H::B dtype_min() {
    return sizeof(typename H::B) == 4 ? (typename H::B)0xff7fffffu
                                      : (typename H::B)(std::string(H::name()) == "f16" ? 0xfbffu : 0xff7fu);
}

template <class H>
typename H::B sentinel() {
    // A NaN in f32 and f16, a huge value in bf16: never a correct gradient.
    return sizeof(typename H::B) == 4 ? (typename H::B)0x7fc0dead : (typename H::B)0x7e55;
}

template <class H>
Inputs<H> make_inputs(const Case& c) {
    std::mt19937_64 rng(c.seed);
    std::uniform_real_distribution<float> unit(0.0f, 1.0f);
    std::normal_distribution<float> normal(0.0f, 1.5f);
    Inputs<H> in;
    const uint64_t n = c.C * c.B;
    in.z.resize(n);
    for (auto& v : in.z) {
        float x;
        // About 2% of the classes stand out, so a class the kernel skips moves the loss.
        if (c.data == HUGE) x = unit(rng) < 0.02f ? 1e4f - 5.0f * unit(rng) : 2e4f * unit(rng) - 1e4f;
        else x = unit(rng) < 0.02f ? 6.0f + unit(rng) : normal(rng);
        v = H::r(x);
    }
    if (c.data == MASKED && c.C >= 4) {
        // Masked classes (-inf): half of each row in one run, so whole threads hold only -inf,
        // and 5% elsewhere; class 0 stays finite.
        for (uint64_t i = 0; i < c.B; ++i)
            for (uint64_t k = 1; k < c.C; ++k)
                if ((k >= c.C / 4 && k < 3 * c.C / 4) || unit(rng) < 0.05f) in.z[i * c.C + k] = H::r(-INFINITY);
    }
    in.labels.resize(c.B);
    for (auto& l : in.labels) l = (uint32_t)(rng() % c.C);
    // Labels at the edges of a row and of its 16-byte slots.
    const uint64_t edges[] = {0, c.C - 1, std::min<uint64_t>(c.C - 1, H::VE - 1), std::min<uint64_t>(c.C - 1, H::VE),
                              c.C / 2};
    for (uint32_t i = 0; i < c.B; i += 3) in.labels[i] = (uint32_t)edges[(i / 3) % 5];
    std::vector<uint32_t> partner(c.B);
    std::iota(partner.begin(), partner.end(), 0u);
    std::shuffle(partner.begin(), partner.end(), rng);
    if (c.B >= 3) in.labels[partner[2]] = in.labels[2];  // a == b: the target weights add
    if (c.bad_labels) {
        in.labels[1 % c.B] = (uint32_t)c.C;  // just out of range
        if (c.B > 3) in.labels[3] = 0xffffffffu;
    }
    in.plan.resize(c.B);
    for (uint32_t i = 0; i < c.B; ++i) {
        PlanEntry e{};
        e.partner = partner[i];
        e.lam = i == 0 ? 1.0f : (i == 1 ? 0.5f : unit(rng));
        in.plan[i] = e;
    }
    if (!c.rows.empty()) {
        for (uint32_t i = 0; i < c.B; ++i) {
            const MaskRow& mr = c.rows[i];
            in.labels[i] = mr.label;
            in.plan[i].partner = mr.partner;
            in.plan[i].lam = mr.lam;
            for (size_t j = 0; j < mr.masked.size(); ++j) {
                const int kind = mr.kind == 2 ? (int)(j % 2) : (mr.kind >= 4 ? (j == 0 ? mr.kind : 1) : mr.kind);
                const float lo = H::f(dtype_min<H>());
                in.z[i * c.C + mr.masked[j]] = kind == 0   ? H::r(-INFINITY)
                                               : kind == 1 ? dtype_min<H>()
                                               : kind == 3 ? H::r(NAN)
                                                           : H::r(kind == 4 ? 0.88f * lo : 0.5f * lo);
            }
        }
    }
    if (c.up_kind == 1) in.up = {c.up};
    if (c.up_kind == 2) {
        in.up.resize(c.B);
        for (auto& u : in.up) u = 4.0f * unit(rng) - 2.0f;
    }
    return in;
}

// One launch of the case's kernel on fresh buffers, in the given block / thread order.
template <class H, class K>
Outputs<H> execute(const Case& c, const CeLaunch& L, const Inputs<H>& in, int block_order, int thread_order,
                   uint64_t seed, const std::string& what) {
    typedef typename H::B B;
    const uint64_t n = c.C * c.B;
    Buf<B> z(c.zoff, n, (B)0);
    std::memcpy(z.v(), in.z.data(), n * sizeof(B));
    const bool grad_buf = c.mode == GRAD || c.mode == GRAD_SHIFTED;
    Buf<B> gr(grad_buf ? c.goff : 0, grad_buf ? n : 0, sentinel<H>());
    Buf<uint32_t> labels(0, c.B, 0);
    std::memcpy(labels.v(), in.labels.data(), c.B * 4);
    Buf<PlanEntry> plan(0, c.B, PlanEntry{});
    std::memcpy(plan.v(), in.plan.data(), c.B * sizeof(PlanEntry));
    Buf<float> losses(0, c.B, NAN), loss(0, 1, NAN), up(0, in.up.size(), 0.0f);
    if (!in.up.empty()) std::memcpy(up.v(), in.up.data(), in.up.size() * 4);
    Buf<uint32_t> flags(0, 2, 0);

    // CeArgs as src/cuda/mixup_ce.rs `launch` fills them.
    CeArgs g{};
    g.logits = (u64)z.v();
    g.grad = c.mode == FWD ? 0 : (c.mode == IN_PLACE ? (u64)z.v() : (u64)gr.v());
    g.labels = (u64)labels.v();
    g.plan = (u64)plan.v();
    g.losses = (u64)losses.v();
    g.loss = (u64)loss.v();
    g.upstream = c.up_kind == 0 ? 0 : (u64)up.v();
    g.flags = (u64)flags.v();
    g.batch = c.B;
    g.classes = c.C;
    g.eps = c.eps;
    g.off = c.eps / (float)c.C;                                   // TargetSpec::off_value
    g.up = c.up_kind == 0 ? c.up : 1.0f;                          // upstream_fields
    g.factor = c.reduction == 0 ? 1.0f / (float)c.B : 1.0f;       // Reduction::grad_factor
    g.up_kind = (u32)c.up_kind;
    g.reduction = (u32)c.reduction;
    g.group = L.group;
    g.smem_slots = L.smem_slots;

    emu::Launch l;
    l.grid = c.force_grid ? c.force_grid : L.grid;
    l.block = L.block;
    l.smem = L.smem;
    l.block_order = block_order;
    l.thread_order = thread_order;
    l.seed = seed;
    std::function<void()> k;
    if (L.kernel == "ce_warp") k = [&] { Entry<K>::warp(g); };
    else if (L.kernel == "ce_block") k = [&] { Entry<K>::block(g); };
    else k = [&] { Entry<K>::online(g); };
    Outputs<H> o;
    o.ok = emu::launch(l, k);
    check(o.ok, what + ": the launch broke a barrier or shuffle rule (see EMU FAIL above)");
    o.loss = *loss.v();
    o.losses.assign(losses.v(), losses.v() + c.B);
    if (c.mode == IN_PLACE) o.grad.assign(z.v(), z.v() + n);
    if (grad_buf) {
        o.grad.assign(gr.v(), gr.v() + n);
        o.before.assign(gr.base, gr.base + c.goff);
    }
    o.logits.assign(z.base, z.base + c.zoff + n);
    o.flags[0] = flags.v()[0];
    o.flags[1] = flags.v()[1];
    return o;
}

template <class H>
std::string case_name(const Case& c, const CeLaunch& L) {
    static const char* red[] = {"Mean", "Sum", "None"};
    static const char* ups[] = {"host", "device", "per-sample"};
    std::string s = fmt("ce %s C %llu B %u %s %s %s up %s %g eps %g zoff %zu", H::name(), (unsigned long long)c.C,
                        c.B, c.dev.name, mode_name(c.mode), red[c.reduction], ups[c.up_kind], c.up, c.eps, c.zoff);
    if (c.mode == GRAD_SHIFTED) s += fmt(" goff %zu", c.goff);
    if (c.data == HUGE) s += " huge";
    if (c.data == MASKED) s += " masked";
    if (!c.rows.empty()) s += " masked-rows";
    if (c.bad_labels) s += " bad-labels";
    if (c.force_grid) s += fmt(" grid %u (forced)", c.force_grid);
    s += fmt(" [%s G %u S %u grid %u block %u smem %u]", L.kernel.c_str(), L.group, L.smem_slots, L.grid, L.block,
             L.smem);
    return s;
}

template <class H, class K>
void run_case(const Case& c) {
    typedef typename H::B B;
    const CeKey key{c.C, (int)sizeof(B), c.dev.optin, c.mode == FWD ? 1 : 0, c.B};
    const CeLaunch L = ce_launch(key);
    if (g_list_queries) return;
    const std::string what = case_name<H>(c, L);
    struct Timer {  // EMU_TIMING=1: the time of each case
        std::string what;
        std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
        ~Timer() {
            static const bool on = std::getenv("EMU_TIMING") != nullptr;
            if (on)
                std::fprintf(stderr, "%.3f s  %s\n",
                             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), what.c_str());
        }
    } timer{what};
    const Inputs<H> in = make_inputs<H>(c);
    const Outputs<H> o = execute<H, K>(c, L, in, 0, 0, c.seed, what);
    if (!o.ok) return;
    const uint64_t C = c.C;
    const uint64_t n = C * c.B;

    // The lanes that share a row, and the longest chain of dependent operations in its sums:
    // a lane's own slots and extras, the butterfly, and the sequential merge of the warps.
    const uint64_t lanes = L.kernel == "ce_warp" ? L.group : L.block;
    double lg = 0;
    while ((1ull << (uint64_t)lg) < lanes) lg += 1;
    const double n_ops = (double)((C + lanes - 1) / lanes) + H::VE + 2 + lg + (double)lanes / 32 + 2;
    // Relative error of sum_c exp(z_c - m): per operation one rounding and, on the device, one
    // ex2.approx (the merges rescale by exp2 too).
    const double eps_s = n_ops * (EX2 + 2 * U);

    uint32_t bad_rows = 0;
    double ref_sum = 0, ref_tol = 0;
    int shown = 0;
    for (uint32_t i = 0; i < c.B; ++i) {
        const PlanEntry& pe = in.plan[i];
        const uint32_t a = in.labels[i], b = in.labels[pe.partner];
        if (a >= C || b >= C) {
            ++bad_rows;
            continue;
        }
        const typename H::B* zr = in.z.data() + (uint64_t)i * C;
        double m = -INFINITY;
        bool has_nan = false;
        for (uint64_t k = 0; k < C; ++k) {
            const double z = H::f(zr[k]);
            has_nan |= std::isnan(z);
            if (z > m) m = z;
        }
        // A max of magnitude 2^24 or more (every class masked with the f32 / bf16 minimum):
        // the kernel then works relative to m (kernels/mixup_ce.cu, "Far maxima"), and so does
        // everything below (z stands for z - base, exact in f64; with sum_c t_c = 1 the loss
        // lse - sum_c t_c z_c is the same, and the tolerances are those of the shifted values,
        // as in the reference's ln s - sum_c t_c (z_c - m)).
        const double base = std::fabs(m) >= 0x1p24 && std::isfinite(m) ? m : 0.0;
        m -= base;
        // zlive: the largest |z| among the classes whose exp(z - m) can show in the sum (the
        // others, masked ones among them, add exactly 0 on both sides); sabs: sum of |z| over
        // the finite classes (the error of the smoothing term's sum).
        double zlive = 0, sabs = 0, s = 0, sz = 0;
        for (uint64_t k = 0; k < C; ++k) {
            const double z = H::f(zr[k]) - base;
            s += std::exp(z - m);
            sz += z;
            if (!std::isfinite(z)) continue;
            if (z >= m - 200) zlive = std::max(zlive, std::fabs(z));
            sabs += std::fabs(z);
        }
        const double lse = m + std::log(s);
        const double eps = c.eps, lam = pe.lam, off = eps / (double)C;
        const double wa = (1 - eps) * lam, wb = (1 - eps) * (1 - lam);
        const double za = H::f(zr[a]) - base, zb = H::f(zr[b]) - base;
        // sum_c t_c z_c with each zero-weight term left out (REFERENCE.md, "Masked classes").
        const double tz = (wa != 0 ? wa * za : 0.0) + (wb != 0 ? wb * zb : 0.0) + (off != 0 ? off * sz : 0.0);
        const double loss = lse - tz;
        const double wz = (wa != 0 ? wa * std::fabs(za) : 0.0) + (wb != 0 ? wb * std::fabs(zb) : 0.0) + off * sabs;
        const double tol_lse = eps_s + 4 * U * (std::fabs(lse) + zlive + std::log2((double)C) + 1);
        const double tol = tol_lse + 4 * U * wz + off * n_ops * U * sabs + 2 * U * (std::fabs(lse) + std::fabs(tz));
        ref_sum += loss;
        if (std::isfinite(loss)) ref_tol += tol;
        const float got = o.losses[i];
        if (std::isnan(loss)) {
            // No finite maximum (every class -inf) or a NaN logit: NaN (any non-finite value
            // for a row with no finite class).
            if ((has_nan ? !std::isnan(got) : std::isfinite(got)) && shown++ < 3)
                check(false, what + fmt(": loss of row %u is %.9g, expected NaN%s", i, got,
                                        has_nan ? "" : " or another non-finite value"));
            continue;  // no gradient to compare with
        } else if (std::isinf(loss)) {
            // A class with weight is -inf: +inf, as PyTorch gives.
            if (got != loss && shown++ < 3)
                check(false, what + fmt(": loss of row %u is %.9g, expected %g", i, got, loss));
        } else if (!close(got, loss, tol) && shown++ < 3) {
            check(false, what + fmt(": loss of row %u is %.9g, expected %.9g (tol %.3g)", i, got, loss, tol));
        }
        if (c.mode == FWD) continue;
        const double up = c.up_kind == 2 ? (double)in.up[i] : (double)c.up;
        const double scale = up * (c.reduction == 0 ? 1.0 / c.B : 1.0);
        int gshown = 0;
        for (uint64_t k = 0; k < C; ++k) {
            const double z = H::f(zr[k]) - base;
            const double t = (1 - eps) * (lam * (k == a) + (1 - lam) * (k == b)) + off;
            const double d = z - lse, p = std::exp(d);
            const double got_g = H::f(o.grad[(uint64_t)i * C + k]);
            if (p == 0 && t == 0) {
                // A masked class with no weight: exactly 0.
                if (got_g != 0 && gshown++ < 2)
                    check(false, what + fmt(": grad[%u, %llu] is %.9g, expected exactly 0 (z %.9g, class a %u b %u)",
                                            i, (unsigned long long)k, got_g, z, a, b));
                continue;
            }
            const double darg = tol_lse + 2 * U * (std::fabs(z) + std::fabs(lse)) + U * std::fabs(d);
            // exp(-inf) is exactly 0 on both sides; ex2.approx.ftz flushes results below 2^-126.
            const double dp = std::isinf(z) ? 0.0 : (p == 0 ? 0x1p-126 : p * (std::expm1(darg) + EX2) + 0x1p-126);
            const double gx = (p - t) * scale;
            const double d32 = std::fabs(scale) * (dp + 3 * U * t) + 4 * U * std::fabs(gx);
            const double gtol = d32 + H::rnd_rel * (std::fabs(gx) + d32) + H::rnd_abs;
            if (!close(got_g, gx, gtol) && gshown++ < 2)
                check(false, what + fmt(": grad[%u, %llu] is %.9g, expected %.9g (tol %.3g, z %.9g, class a %u b %u)",
                                        i, (unsigned long long)k, got_g, gx, gtol, z, a, b));
        }
        check(gshown == 0, what + fmt(": gradient of row %u", i));
    }
    check(shown == 0, what + ": per-sample losses");

    // Out-of-range labels: counted once per row, the block counter back at 0.
    check(o.flags[0] == bad_rows, what + fmt(": %u rows flagged, %u have an out-of-range label", o.flags[0], bad_rows));
    check(o.flags[1] == 0, what + fmt(": the block counter was left at %u", o.flags[1]));

    // The reduced loss: the kernel's own per-sample losses summed in f64, and the reference.
    const uint64_t T = L.block;
    const double n_red = (double)((c.B + T - 1) / T) + 5 + (double)T / 32 + 1;
    double ksum = 0, kabs = 0;
    for (float v : o.losses) ksum += v, kabs += std::fabs(v);
    const double div = c.reduction == 1 ? 1.0 : (double)c.B;
    const double want = ksum / div;
    const double tol_red = n_red * U * kabs / div + 2 * U * std::fabs(want);
    if (!std::isfinite(want))
        check(!std::isfinite(o.loss), what + fmt(": reduced loss %.9g of non-finite losses", o.loss));
    else if (std::fabs(ksum) > 0x1.fffffep127 * (1 - 1e-6))
        // The f32 sum of the per-sample losses overflows (rows of huge losses: far maxima).
        check(std::isinf(o.loss) || close(o.loss, want, tol_red),
              what + fmt(": reduced loss %.9g of per-sample losses summing to %.9g", o.loss, ksum));
    else
        check(close(o.loss, want, tol_red), what + fmt(": reduced loss %.9g, the kernel's per-sample losses give %.9g (tol %.3g)",
                                                      o.loss, want, tol_red));
    if (bad_rows == 0 && std::isfinite(want) && std::isfinite(o.loss))
        check(close(o.loss, ref_sum / div, tol_red + ref_tol / div),
              what + fmt(": reduced loss %.9g, reference %.9g", o.loss, ref_sum / div));

    // Nothing written outside the outputs.
    const bool grad_buf = c.mode == GRAD || c.mode == GRAD_SHIFTED;
    if (c.mode != IN_PLACE)
        check(std::memcmp(o.logits.data() + c.zoff, in.z.data(), n * sizeof(B)) == 0, what + ": the logits changed");
    bool untouched = true;
    for (size_t k = 0; k < c.zoff; ++k) untouched &= o.logits[k] == (B)0;
    if (grad_buf)
        for (const B v : o.before) untouched &= v == sentinel<H>();
    check(untouched, what + ": wrote before its view");
    if (bad_rows > 0 && c.mode != FWD) {
        // Rows with a bad label have no defined target, but their gradient is still written.
        bool finite = true;
        for (uint64_t k = 0; k < n; ++k) finite &= std::isfinite(H::f(o.grad[k]));
        check(finite, what + ": gradient of rows with a bad label not finite");
    }

    // Determinism: the same launch in other block and thread orders gives the same bits.
    if (c.orders) {
        // Blocks reversed with the lowest ready thread first, shuffled with threads at random,
        // in order with the highest ready thread first.
        const int blocks[] = {1, 2, 0}, threads[] = {1, 3, 2};
        const char* hows[] = {"reversed blocks, lowest thread first", "shuffled blocks and threads",
                              "highest thread first"};
        for (int v = 0; v < 3; ++v) {
            const Outputs<H> p = execute<H, K>(c, L, in, blocks[v], threads[v], c.seed * 7919 + v, what);
            if (!p.ok) return;
            const char* how = hows[v];
            check(std::memcmp(&p.loss, &o.loss, 4) == 0,
                  what + fmt(": reduced loss %.9g in %s, %.9g in order", p.loss, how, o.loss));
            check(std::memcmp(p.losses.data(), o.losses.data(), c.B * 4) == 0, what + ": losses differ in " + how);
            check(p.grad == o.grad, what + ": gradient differs in " + how);
            check(p.flags[0] == o.flags[0] && p.flags[1] == 0, what + ": flags differ in " + how);
        }
    }
}

template <class H, class K>
void cases_for(const Device* devices, size_t ndev) {
    constexpr uint64_t VE = H::VE;
    // The largest C whose rows hold `slots` full slots at most (C / VE == slots).
    auto last_c = [](uint64_t slots) { return (slots + 1) * VE - 1; };
    std::vector<uint64_t> cs = {1, 2, 3, 31, 32, 33, 1000, 2049};
    // Strategy boundaries (src/cuda/mixup_ce.rs): ce_warp lanes per row double after 4, 8, 16,
    // 32, 64 slots; ce_warp -> ce_block (ce_online forward only) after 128; 64 -> 96 threads
    // after 256; registers -> shared memory after 4096; one more shared slot after 5120; shared
    // memory -> ce_online after 4096 + 1024 S slots (S = 14 on H100).
    for (uint64_t s : {4, 8, 16, 32, 64, 128, 256, 4096, 5120, 18432})
        for (int d : {-1, 0, 1}) cs.push_back(last_c(s) + (uint64_t)(int64_t)d);
    std::sort(cs.begin(), cs.end());
    cs.erase(std::unique(cs.begin(), cs.end()), cs.end());
    uint64_t seed = 1000 * sizeof(typename H::B);
    for (const uint64_t C : cs) {
        const bool small = C <= 2100, medium = C <= 40000;
        const size_t odd = VE == 4 ? 1 : 3;  // a logits view off its 16-byte boundary
        Case c;
        c.C = C;
        // Mean, gradient to another buffer, every order.
        c.B = small ? 5 : 2;
        c.mode = GRAD;
        c.orders = true;
        c.seed = ++seed;
        run_case<H, K>(c);
        // One row, Sum, in place, device upstream, view at offset 1, no smoothing.
        c = Case{};
        c.C = C;
        c.B = 1;
        c.mode = IN_PLACE;
        c.reduction = 1;
        c.up_kind = 1;
        c.up = 0.75f;
        c.eps = 0.0f;
        c.zoff = 1;
        c.seed = ++seed;
        run_case<H, K>(c);
        // Forward only, None.
        c = Case{};
        c.C = C;
        c.B = small ? 5 : 2;
        c.mode = FWD;
        c.reduction = 2;
        c.zoff = odd;
        c.orders = !medium;
        c.seed = ++seed;
        run_case<H, K>(c);
        if (!medium) continue;
        // None with a per-sample upstream, gradient at another 16-byte offset than the logits.
        c = Case{};
        c.C = C;
        c.B = small ? 3 : 2;
        c.mode = GRAD_SHIFTED;
        c.reduction = 2;
        c.up_kind = 2;
        c.zoff = odd;
        c.goff = 0;
        c.seed = ++seed;
        run_case<H, K>(c);
        // Huge logits.
        c = Case{};
        c.C = C;
        c.B = 2;
        c.mode = GRAD;
        c.data = HUGE;
        c.up = -2.5f;
        c.reduction = 1;
        c.seed = ++seed;
        run_case<H, K>(c);
        // Masked (-inf) logits: the gradient stays exact, the loss infinite.
        c = Case{};
        c.C = C;
        c.B = 3;
        c.mode = GRAD;
        c.data = MASKED;
        c.seed = ++seed;
        run_case<H, K>(c);
        // Out-of-range labels, forward + backward and forward only.
        for (Mode m : {GRAD, FWD}) {
            c = Case{};
            c.C = C;
            c.B = 5;
            c.mode = m;
            c.bad_labels = true;
            c.seed = ++seed;
            run_case<H, K>(c);
        }
        if (!small) continue;
        // A large batch, in place, every order.
        c = Case{};
        c.C = C;
        c.B = 64;
        c.mode = IN_PLACE;
        c.orders = C == 1000 || C == 2049;
        c.seed = ++seed;
        run_case<H, K>(c);
        // Fewer blocks than the host launches: the grid-stride loops of every kernel (and the
        // alternating reduction buffers of ce_block / ce_online), reached for B >= 2^31.
        c = Case{};
        c.C = C;
        c.B = 9;
        c.mode = GRAD;
        c.force_grid = 2;
        c.orders = true;
        c.seed = ++seed;
        run_case<H, K>(c);
        // The same for ce_warp (8 rows per block at 32 lanes a row), with a device upstream.
        c = Case{};
        c.C = C;
        c.B = 64;
        c.mode = GRAD;
        c.up_kind = 1;
        c.up = 3.0f;
        c.force_grid = 3;
        c.seed = ++seed;
        run_case<H, K>(c);
        // More rows than the last block has threads: each thread of ce_finish sums several.
        if (C <= 600) {
            c = Case{};
            c.C = C;
            c.B = C <= 40 ? 600 : 300;
            c.mode = C % 2 ? FWD : IN_PLACE;
            c.reduction = (int)(C % 3);
            c.seed = ++seed;
            run_case<H, K>(c);
        }
    }
    // Other devices: the shared-memory limit moves the ce_block -> ce_online boundary
    // (S <= 9 on A100, 6 on L40, 3 on T4).
    for (size_t d = 0; d < ndev; ++d) {
        const Device dev = devices[d];
        const uint64_t s_max = (dev.optin - 2048) / (1024 * 16);
        for (uint64_t dc : {0, 1}) {
            Case c;
            c.C = last_c(4096 + 1024 * s_max) + dc;
            c.dev = dev;
            c.B = 2;
            c.mode = dc ? IN_PLACE : GRAD;
            c.zoff = dc;
            c.seed = ++seed;
            run_case<H, K>(c);
        }
    }
    // Large rows: 100 000 classes (ce_online in f32, ce_block with 9 shared slots in 16 bits),
    // forward only (ce_online), in place, and the gradient at another 16-byte offset.
    for (Mode m : {GRAD, FWD, IN_PLACE, GRAD_SHIFTED}) {
        Case c;
        c.C = 100000;
        c.B = 2;
        c.mode = m;
        c.zoff = m == IN_PLACE || m == GRAD_SHIFTED ? 1 : 0;
        c.seed = ++seed;
        run_case<H, K>(c);
    }
}

// B rows of C classes with masked classes (REFERENCE.md, "Masked classes"). Rows pair up with
// their neighbours (2q <-> 2q+1) so a row's partner label b is another row's label; row i takes
// pattern i % 7, lam from {1, 0.5, 0, 0.3} and the mask value from its index:
//   0 one class masked, at every position of the first two 16-byte slots (lane positions and
//     the row's head), at both ends and in the middle, in turn;  1 two: both ends, or a pair;
//   2 most: all but about C/8 classes and the label;  3 all but one: the label;
//   4 all but one: another class (the label is masked);  5 the partner's label b;
//   6 every third class except the label, -inf and the dtype's minimum alternately.
// Label a is kept unmasked except in pattern 4; b is masked where the pattern reaches it (and
// always in pattern 5), so some rows mix with a masked partner label and some do not.
std::vector<MaskRow> mask_rows(uint64_t C, int VE, uint32_t B, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<MaskRow> rows(B);
    for (uint32_t i = 0; i < B; ++i) {
        rows[i].label = (uint32_t)(rng() % C);
        rows[i].partner = (i ^ 1u) < B ? (i ^ 1u) : i;
        static const float lams[] = {1.0f, 0.5f, 0.0f, 0.3f};
        rows[i].lam = lams[(i + i / 7) % 4];
        rows[i].kind = (int)((i + i / 7) / 4 % 2);
    }
    std::vector<uint64_t> positions;
    for (uint64_t k = 0; k < std::min<uint64_t>(C, 2 * (uint64_t)VE + 1); ++k) positions.push_back(k);
    for (uint64_t k : {C - 1, C - 2, C / 2})
        if (k < C) positions.push_back(k);
    for (uint32_t i = 0; i < B; ++i) {
        MaskRow& r = rows[i];
        const uint64_t a = r.label, b = rows[r.partner].label;
        const uint64_t turn = i / 7, pos = positions[turn % positions.size()];
        std::vector<bool> m(C, false);
        switch (i % 7) {
            case 0: m[pos] = true; break;
            case 1:
                if (turn % 2 == 0) m[0] = m[C - 1] = true;
                else m[pos] = m[(pos + 1) % C] = true;
                break;
            case 2:
                for (uint64_t k = 0; k < C; ++k) m[k] = rng() % 8 != 0;
                break;
            case 3:
            case 4: m.assign(C, true); break;
            case 5: m[b == a ? pos : b] = true; break;
            default:
                for (uint64_t k = 0; k < C; k += 3) m[k] = true;
                r.kind = 2;
        }
        if (i % 7 == 4 && C > 1) {
            m[(a + 1 + rng() % (C - 1)) % C] = false;  // the one class left; a stays masked
        } else {
            m[a] = false;
        }
        for (uint64_t k = 0; k < C; ++k)
            if (m[k]) r.masked.push_back(k);
    }
    return rows;
}

// Masked classes over the widths trainers use, for each strategy the host picks (ce_warp, ce_block
// from registers and from shared memory, ce_online forward and, on a T4's shared memory, with
// the gradient), with and without smoothing; then rows with a NaN logit and an all -inf row.
template <class H, class K>
void masked_cases() {
    uint64_t seed = 5000 * sizeof(typename H::B);
    const size_t odd = H::VE == 4 ? 1 : 3;
    for (const uint64_t C : {1, 15, 16, 17, 31, 1000, 32771, 100000}) {
        const bool big = C > 1000;
        // Rows per launch: every pattern with several positions where rows are cheap.
        const uint32_t B = C <= 31 ? 42 : (C == 1000 ? 14 : 7);
        for (const float eps : {0.0f, 0.1f}) {
            for (const Mode mode : {GRAD, FWD}) {
                if (C == 100000 && mode == FWD && eps == 0.0f) continue;  // time: one forward row set
                Case c;
                c.C = C;
                c.B = C == 100000 ? 4 : B;
                c.mode = mode;
                c.eps = eps;
                c.reduction = eps == 0.0f ? 1 : 0;
                c.zoff = (eps == 0.0f) == (mode == GRAD) ? 0 : odd;  // shifts the lane positions
                c.seed = ++seed;
                c.rows = mask_rows(C, H::VE, c.B, c.seed);
                run_case<H, K>(c);
            }
            if (big) {
                // The gradient through ce_online: a T4's shared memory holds too few slots.
                Case c;
                c.C = C;
                c.B = C == 100000 ? 2 : 4;
                c.dev = T4;
                c.mode = IN_PLACE;
                c.eps = eps;
                c.seed = ++seed;
                c.rows = mask_rows(C, H::VE, c.B, c.seed + (eps == 0.0f ? 2 : 0));
                run_case<H, K>(c);
            }
        }
    }
    // NaN logits give NaN; a row of -inf only gives a non-finite loss (PyTorch: NaN).
    for (const uint64_t C : {17, 1000}) {
        Case c;
        c.C = C;
        c.B = 4;
        c.eps = 0.0f;
        c.seed = ++seed;
        c.rows = mask_rows(C, H::VE, c.B, c.seed);
        c.rows[0].kind = 3;
        c.rows[0].masked = {C / 3};
        c.rows[1].kind = 3;
        c.rows[1].masked = {c.rows[1].label};
        c.rows[2].kind = 0;
        c.rows[2].masked.clear();
        for (uint64_t k = 0; k < C; ++k) c.rows[2].masked.push_back(k);
        run_case<H, K>(c);
    }
}

// Rows whose every logit is at (or near) the dtype's minimum: in f32 and bf16 the max is below
// -2^24 and the kernel shifts in natural units (kernels/mixup_ce.cu, "Far maxima"; before, m
// log2e overflowed or lost its bits and the loss was -inf); the loss is ln C-like, finite, as in
// the reference. Every strategy (ce_warp; ce_block from registers and
// shared memory; ce_online forward and, on a T4, with the gradient), every dtype, with and
// without smoothing. Row i % 6: all at the minimum; one class at 0.88 x min; one at min / 2;
// all at the minimum; -inf and the
// minimum alternately (+inf with smoothing or where a or b is -inf); all but the label.
template <class H, class K>
void far_max_cases() {
    uint64_t seed = 9000 * sizeof(typename H::B);
    for (const uint64_t C : {1, 15, 17, 1000, 2049, 32771, 100000}) {
        const bool big = C > 2049;
        for (const float eps : {0.0f, 0.1f}) {
            for (const Mode mode : {GRAD, FWD, IN_PLACE}) {
                Case c;
                c.C = C;
                c.B = big ? 3 : 12;
                c.mode = mode;
                c.eps = eps;
                c.dev = big && mode == IN_PLACE ? T4 : H100;  // T4: the gradient through ce_online
                c.reduction = eps == 0.0f ? 1 : 0;
                c.zoff = mode == FWD ? (H::VE == 4 ? 1 : 3) : 0;
                c.seed = ++seed;
                std::mt19937_64 rng(c.seed);
                c.rows.resize(c.B);
                static const float lams[] = {1.0f, 0.5f, 0.3f, 0.0f};
                for (uint32_t i = 0; i < c.B; ++i) {
                    MaskRow& r = c.rows[i];
                    r.label = (uint32_t)(rng() % C);
                    r.partner = (i ^ 1u) < c.B ? (i ^ 1u) : i;
                    r.lam = lams[(i / 2 + C) % 4];
                    const int pattern = (int)((i + C + (eps != 0.0f)) % 6);
                    static const int kinds[] = {1, 4, 5, 1, 2, 1};
                    r.kind = kinds[pattern];
                    const uint64_t first = rng() % C;  // the class of kinds 4 and 5
                    r.masked.push_back(first);
                    for (uint64_t k = 0; k < C; ++k)
                        if (k != first && !(pattern == 5 && k == r.label)) r.masked.push_back(k);
                    if (pattern == 5 && first == r.label) r.masked.erase(r.masked.begin());
                }
                run_case<H, K>(c);
            }
        }
    }
}

}  // namespace

void test_mixup_ce() {
    far_max_cases<HF32, F32>();
    far_max_cases<HF16, F16>();
    far_max_cases<HBF16, BF16>();
    masked_cases<HF32, F32>();
    masked_cases<HF16, F16>();
    masked_cases<HBF16, BF16>();
    const Device others[] = {A100, L40, T4};
    cases_for<HF32, F32>(others, 3);
    cases_for<HF16, F16>(others, 3);
    cases_for<HBF16, BF16>(others, 3);
    // The largest row the issue names: 256 000 bf16 classes, ce_online.
    Case c;
    c.C = 256000;
    c.B = 1;
    c.mode = GRAD;
    c.seed = 77;
    run_case<HBF16, BF16>(c);
}
