// The fused mixup binary cross-entropy kernels (kernels/mixup_bce.cu: bce_warp, bce_block) on the
// host, against losses and gradients computed here in f64 from /work/shared/REFERENCE.md
// ("Mixup binary cross-entropy") with the crate's rules (src/cpu/mixup_bce.rs, src/spec.rs):
//   t_c = (1-eps)(lam [c=a] + (1-lam) [c=b]) + eps/C, or with a threshold [t > thr] decided on
//         timm's f32 rounding of y1 lam + y2 (1 - lam) (BceSpec::thresholded);
//   l = (1 - t) z + cw softplus(-z) (z >= 0), cw softplus(-z) - w t z (z < 0), cw = 1 + (w-1) t,
//   each product with a zero weight left out; L_i = sum_c v_c l_ic;
//   grad = v (cw sigma(z) - w t) upstream factor.
// Every dtype; the launch the host makes (src/cuda/mixup_bce.rs `bce_strategy`, mirrored in
// `host_launch`) and the other strategy and lane counts too; forward only, gradient to another
// buffer (same or other 16-byte offset), in place; Mean / Sum / None, sum_classes, host /
// device / per-sample upstream; weight and pos_weight (some zero); thresholds, with lam on the
// boundary; masked logits (-inf and the dtype's minimum) with zero and non-zero targets; bad
// labels; grids smaller than the host's (grid-stride loops); and the same launch in other block
// and thread orders, bit for bit.
#include "check.h"

#include "../common.cuh"
#define MIXUP_ALL 1
#include "../mixup_bce.cu"

namespace {

constexpr double U = 0x1p-24;  // f32 unit roundoff

template <class K>
struct BceEntry;
template <>
struct BceEntry<F32> {
    static void warp(const BceArgs& g) { bce_warp_f32(g); }
    static void block(const BceArgs& g) { bce_block_f32(g); }
};
template <>
struct BceEntry<F16> {
    static void warp(const BceArgs& g) { bce_warp_f16(g); }
    static void block(const BceArgs& g) { bce_block_f16(g); }
};
template <>
struct BceEntry<BF16> {
    static void warp(const BceArgs& g) { bce_warp_bf16(g); }
    static void block(const BceArgs& g) { bce_block_bf16(g); }
};

enum Mode { FWD, GRAD, GRAD_SHIFTED, IN_PLACE };

struct BceCase {
    uint64_t C = 1;
    uint32_t B = 1;
    Mode mode = GRAD;
    int reduction = 0;  // 0 Mean, 1 Sum, 2 None
    int up_kind = 0;    // 0 host scalar, 1 device scalar, 2 per sample
    float up = 1.0f, eps = 0.1f;
    bool weight = false, pos_weight = false, sum_classes = false, bad_labels = false;
    bool has_thr = false;
    float thr = 0.2f;
    bool boundary = false;  // a lam whose target lands on the threshold
    int masked = 0;         // 0 none; 1 -inf; 2 the dtype's minimum; 3 both; 4 a NaN per row
    size_t zoff = 0, goff = 0;
    int kernel = -1;  // -1 the host's launch; 0 warp with `group`; 1 block with `threads`
    uint32_t group = 1, threads = 64, force_grid = 0;
    bool orders = false;
    uint64_t seed = 1;
};

struct BceLaunch {
    bool block = false;
    uint32_t group = 1, threads = BCE_NT, grid = 1;
};

// A mirror of src/cuda/mixup_bce.rs `bce_strategy` + launch config, used only when no table from
// the crate is given (tests/kernels_emulated.rs passes the crate's own `bce_launch`): G = next
// power of two of ceil(slots / 4) lanes per row while slots <= 128, else a block of
// ceil(slots / 4) threads rounded up to 32, clamped to 64..1024.
BceLaunch host_launch_mirror(uint64_t C, int elem, uint64_t B) {
    const uint64_t slots = C / (16 / (uint64_t)elem);
    BceLaunch l;
    if (slots <= 128) {
        uint64_t g = std::max<uint64_t>((slots + 3) / 4, 1), p = 1;
        while (p < g) p <<= 1;
        l.group = (uint32_t)p;
        l.threads = BCE_NT;
        l.grid = (uint32_t)std::min<uint64_t>((B + BCE_NT / p - 1) / (BCE_NT / p), (1ull << 31) - 1);
    } else {
        l.block = true;
        l.group = 32;  // BceArgs::group, unused by bce_block
        const uint64_t t = ((slots + 3) / 4 + 31) / 32 * 32;
        l.threads = (uint32_t)std::min<uint64_t>(std::max<uint64_t>(t, 64), 1024);
        l.grid = (uint32_t)std::min<uint64_t>(B, (1ull << 31) - 1);
    }
    l.grid = std::max<uint32_t>(l.grid, 1);
    return l;
}

// The host's launch (from the crate's table when there is one).
BceLaunch host_launch(uint64_t C, int elem, uint64_t B) {
    const BceKey k{C, elem, B};
    if (g_list_queries) g_bce_queries.push_back(k);
    if (g_bce_table.empty()) return host_launch_mirror(C, elem, B);
    auto it = g_bce_table.find(k);
    if (it == g_bce_table.end()) {
        check(false, fmt("no host BCE launch for C %llu, %d-byte elements, B %llu", (unsigned long long)C, elem,
                         (unsigned long long)B));
        return host_launch_mirror(C, elem, B);
    }
    const BceHostLaunch& h = it->second;
    BceLaunch l;
    l.block = h.kernel == "bce_block";
    l.group = h.group;
    l.threads = h.block;
    l.grid = h.grid;
    const BceLaunch m = host_launch_mirror(C, elem, B);
    check(m.block == l.block && m.group == l.group && m.threads == l.threads && m.grid == l.grid,
          fmt("host_launch_mirror differs from the crate for C %llu, %d-byte elements, B %llu: update it",
              (unsigned long long)C, elem, (unsigned long long)B));
    return l;
}

template <class H>
typename H::B min_bits() {
    return sizeof(typename H::B) == 4 ? (typename H::B)0xff7fffffu
                                      : (typename H::B)(std::string(H::name()) == "f16" ? 0xfbffu : 0xff7fu);
}

template <class H>
typename H::B sentinel() {
    return sizeof(typename H::B) == 4 ? (typename H::B)0x7fc0dead : (typename H::B)0x7e55;
}

template <class H>
struct In {
    std::vector<typename H::B> z;
    std::vector<uint32_t> labels;
    std::vector<PlanEntry> plan;
    std::vector<float> up, w, pw;
};

template <class H>
struct Out {
    bool ok = true;
    float loss = 0;
    std::vector<float> losses;
    std::vector<typename H::B> grad, before, logits;
    uint32_t flags[2] = {0, 0};
};

// The thresholded target as BceSpec::thresholded decides it (f32, each product and the sum
// rounded once; this file is compiled with -ffp-contract=off).
float thr_target(float y1, float y2, float lam, float thr) {
    const float mu = 1.0f - lam;
    const float p = y1 * lam, q = y2 * mu;
    return p + q > thr ? 1.0f : 0.0f;
}

template <class H>
In<H> make(const BceCase& c) {
    std::mt19937_64 rng(c.seed);
    std::uniform_real_distribution<float> unit(0.0f, 1.0f);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    In<H> in;
    const uint64_t n = c.C * c.B;
    in.z.resize(n);
    for (auto& v : in.z) v = H::r(unit(rng) < 0.03f ? 40.0f * unit(rng) - 20.0f : normal(rng));
    in.labels.resize(c.B);
    for (auto& l : in.labels) l = (uint32_t)(rng() % c.C);
    for (uint32_t i = 0; i < c.B; i += 3) in.labels[i] = (uint32_t)((i / 3) % 2 ? c.C - 1 : 0);
    std::vector<uint32_t> partner(c.B);
    std::iota(partner.begin(), partner.end(), 0u);
    std::shuffle(partner.begin(), partner.end(), rng);
    if (c.B >= 3) in.labels[partner[2]] = in.labels[2];  // a == b
    if (c.bad_labels) {
        in.labels[1 % c.B] = (uint32_t)c.C;
        if (c.B > 3) in.labels[3] = 0xffffffffu;
    }
    in.plan.resize(c.B);
    for (uint32_t i = 0; i < c.B; ++i) {
        PlanEntry e{};
        e.partner = partner[i];
        e.lam = i == 0 ? 1.0f : (i == 1 ? 0.5f : (i == 4 ? 0.0f : unit(rng)));
        in.plan[i] = e;
    }
    if (c.boundary && c.has_thr) {
        // lam whose soft target t_a = on lam + off (1 - lam) is the f32 value nearest the
        // threshold, and its neighbours: the decision then rests on timm's rounding.
        const double e = c.eps == 0.1f ? 0.1 : (double)c.eps, off = e / (double)c.C, on = 1.0 - e + off;
        const float lam0 = (float)(((double)c.thr - off) / (on - off));
        float l = lam0;
        for (int k = 0; k < 3; ++k) l = std::nextafter(l, -1.0f);
        for (uint32_t i = 0; i < c.B && i < 7; ++i, l = std::nextafter(l, 2.0f)) in.plan[i].lam = l;
    }
    if (c.masked == 4) {
        // One NaN logit per row, some at classes of weight 0 (k % 7 == 3): NaN loss all the same.
        for (uint32_t i = 0; i < c.B; ++i) in.z[i * c.C + (i % 2 ? (3 % c.C) : (i * 5) % c.C)] = H::r(NAN);
    } else if (c.masked) {
        // Per row: a few classes masked, among them (by turns) the label, the partner's label or
        // neither; with a threshold the other classes have target 0, so both kinds show.
        for (uint32_t i = 0; i < c.B; ++i) {
            const uint32_t a = in.labels[i], b = in.labels[in.plan[i].partner];
            auto put = [&](uint64_t k, int j) {
                if (k >= c.C) return;
                const int kind = c.masked == 3 ? j % 2 : c.masked - 1;
                in.z[i * c.C + k] = kind == 0 ? H::r(-INFINITY) : min_bits<H>();
            };
            for (uint64_t k = i % 3; k < c.C; k += 5) put(k, (int)k);
            if (i % 4 == 1) put(a, (int)i);
            if (i % 4 == 2) put(b, (int)i);
            if (i % 4 == 3)  // the whole row
                for (uint64_t k = 0; k < c.C; ++k) put(k, (int)k);
        }
    }
    if (c.weight) {
        in.w.resize(c.C);
        for (uint64_t k = 0; k < c.C; ++k) in.w[k] = k % 7 == 3 ? 0.0f : 2.0f * unit(rng);
    }
    if (c.pos_weight) {
        in.pw.resize(c.C);
        for (uint64_t k = 0; k < c.C; ++k) in.pw[k] = k % 5 == 2 ? 0.0f : 0.25f + 2.75f * unit(rng);
    }
    if (c.up_kind == 1) in.up = {c.up};
    if (c.up_kind == 2) {
        in.up.resize(c.B);
        for (auto& u : in.up) u = 4.0f * unit(rng) - 2.0f;
    }
    return in;
}

template <class H, class K>
Out<H> execute(const BceCase& c, const BceLaunch& L, const In<H>& in, int bo, int to, uint64_t seed,
               const std::string& what) {
    typedef typename H::B B;
    const uint64_t n = c.C * c.B;
    Buf<B> z(c.zoff, n, (B)0);
    std::memcpy(z.v(), in.z.data(), n * sizeof(B));
    const bool gbuf = c.mode == GRAD || c.mode == GRAD_SHIFTED;
    Buf<B> gr(gbuf ? c.goff : 0, gbuf ? n : 0, sentinel<H>());
    Buf<uint32_t> labels(0, c.B, 0);
    std::memcpy(labels.v(), in.labels.data(), c.B * 4);
    Buf<PlanEntry> plan(0, c.B, PlanEntry{});
    std::memcpy(plan.v(), in.plan.data(), c.B * sizeof(PlanEntry));
    Buf<float> losses(0, c.B, NAN), loss(0, 1, NAN), up(0, in.up.size(), 0.0f);
    if (!in.up.empty()) std::memcpy(up.v(), in.up.data(), in.up.size() * 4);
    Buf<float> w(0, in.w.size(), 0.0f), pw(0, in.pw.size(), 0.0f);
    if (!in.w.empty()) std::memcpy(w.v(), in.w.data(), in.w.size() * 4);
    if (!in.pw.empty()) std::memcpy(pw.v(), in.pw.data(), in.pw.size() * 4);
    Buf<uint32_t> flags(0, 2, 0);

    // BceArgs as src/cuda/mixup_bce.rs `launch` fills them.
    BceArgs g{};
    g.logits = (u64)z.v();
    g.grad = c.mode == FWD ? 0 : (c.mode == IN_PLACE ? (u64)z.v() : (u64)gr.v());
    g.labels = (u64)labels.v();
    g.plan = (u64)plan.v();
    g.losses = (u64)losses.v();
    g.loss = (u64)loss.v();
    g.upstream = c.up_kind == 0 ? 0 : (u64)up.v();
    g.flags = (u64)flags.v();
    g.weight = c.weight ? (u64)w.v() : 0;
    g.pos_weight = c.pos_weight ? (u64)pw.v() : 0;
    g.batch = c.B;
    g.classes = c.C;
    g.eps = c.eps;
    const double off64 = (double)c.eps / (double)c.C;
    g.off = (float)off64;  // TargetSpec::off_value
    g.up = c.up_kind == 0 ? c.up : 1.0f;
    const double count = c.sum_classes ? (double)c.B : (double)c.B * (double)c.C;
    g.count = (float)count;
    g.factor = c.reduction == 0 ? (float)(1.0 / count) : 1.0f;  // BceSpec::grad_factor
    g.thr = c.thr;
    // BceSpec::timm_on_off: from eps as the user wrote it (0.1, not the f32 widened).
    const double eps_dec = c.eps == 0.1f ? 0.1 : (double)c.eps, off_dec = eps_dec / (double)c.C;
    g.t_on = (float)(1.0 - eps_dec + off_dec);
    g.t_off = (float)off_dec;
    g.up_kind = (u32)c.up_kind;
    g.reduction = (u32)c.reduction;
    g.thresholded = c.has_thr ? 1 : 0;
    g.group = L.group;

    emu::Launch l;
    l.grid = c.force_grid ? c.force_grid : L.grid;
    l.block = L.block ? L.threads : BCE_NT;
    l.block_order = bo;
    l.thread_order = to;
    l.seed = seed;
    std::function<void()> k;
    if (L.block) k = [&] { BceEntry<K>::block(g); };
    else k = [&] { BceEntry<K>::warp(g); };
    Out<H> o;
    o.ok = emu::launch(l, k);
    check(o.ok, what + ": the launch broke a barrier or shuffle rule (see EMU FAIL above)");
    o.loss = *loss.v();
    o.losses.assign(losses.v(), losses.v() + c.B);
    if (c.mode == IN_PLACE) o.grad.assign(z.v(), z.v() + n);
    if (gbuf) {
        o.grad.assign(gr.v(), gr.v() + n);
        o.before.assign(gr.base, gr.base + c.goff);
    }
    o.logits.assign(z.base, z.base + c.zoff + n);
    o.flags[0] = flags.v()[0];
    o.flags[1] = flags.v()[1];
    return o;
}

template <class H, class K>
void run_bce(const BceCase& c) {
    typedef typename H::B B;
    BceLaunch L = host_launch(c.C, (int)sizeof(B), c.B);
    if (g_list_queries) return;
    if (c.kernel == 0) L = BceLaunch{false, c.group, BCE_NT, std::max<uint32_t>(1, (c.B + BCE_NT / c.group - 1) / (BCE_NT / c.group))};
    if (c.kernel == 1) L = BceLaunch{true, 32, c.threads, c.B};
    static const char* red[] = {"Mean", "Sum", "None"};
    static const char* modes[] = {"forward", "grad", "grad-at-other-offset", "in-place"};
    std::string what = fmt("bce %s C %llu B %u %s %s up %d %g eps %g zoff %zu goff %zu", H::name(),
                           (unsigned long long)c.C, c.B, modes[c.mode], red[c.reduction], c.up_kind, c.up, c.eps,
                           c.zoff, c.goff);
    if (c.weight) what += " weight";
    if (c.pos_weight) what += " pos_weight";
    if (c.sum_classes) what += " sum_classes";
    if (c.has_thr) what += fmt(" thr %g%s", c.thr, c.boundary ? " (boundary lam)" : "");
    if (c.masked) what += fmt(" masked %d", c.masked);
    if (c.bad_labels) what += " bad-labels";
    what += fmt(" [%s G %u T %u grid %u%s]", L.block ? "bce_block" : "bce_warp", L.group, L.threads,
                c.force_grid ? c.force_grid : L.grid, c.force_grid ? " forced" : "");
    const In<H> in = make<H>(c);
    const Out<H> o = execute<H, K>(c, L, in, 0, 0, c.seed, what);
    if (!o.ok) return;
    const uint64_t C = c.C;
    const uint64_t lanes = L.block ? L.threads : L.group;
    double lg = 0;
    while ((1ull << (uint64_t)lg) < lanes) lg += 1;
    const double n_ops = (double)((C + lanes - 1) / lanes) + 2 * H::VE + lg + (double)lanes / 32 + 4;

    const double eps = c.eps, off = eps / (double)C;
    const double eps_dec = c.eps == 0.1f ? 0.1 : eps, off_dec = eps_dec / (double)C;
    const float on32 = (float)(1.0 - eps_dec + off_dec), off32 = (float)off_dec;
    const double count = c.sum_classes ? (double)c.B : (double)c.B * (double)C;
    uint32_t bad_rows = 0;
    double ref_sum = 0, ref_tol = 0;
    bool ref_finite = true;
    int shown = 0;
    for (uint32_t i = 0; i < c.B; ++i) {
        const PlanEntry& pe = in.plan[i];
        const uint32_t a = in.labels[i], b = in.labels[pe.partner];
        if (a >= C || b >= C) {
            ++bad_rows;
            continue;
        }
        const double lam = pe.lam;
        double ta, tb, toff;
        if (c.has_thr) {
            const bool same = a == b;
            ta = same ? thr_target(on32, on32, pe.lam, c.thr) : thr_target(on32, off32, pe.lam, c.thr);
            tb = same ? ta : thr_target(off32, on32, pe.lam, c.thr);
            toff = thr_target(off32, off32, pe.lam, c.thr);
        } else if (a == b) {
            ta = tb = (1 - eps) + off;
            toff = off;
        } else {
            ta = (1 - eps) * lam + off;
            tb = (1 - eps) * (1 - lam) + off;
            toff = off;
        }
        const double up = c.up_kind == 2 ? (double)in.up[i] : (double)c.up;
        const double scale = up * (c.reduction == 0 ? 1.0 / count : 1.0);
        double L_i = 0, labs = 0, lerr = 0;
        // An element whose unweighted loss is past the f32 range (a dtype-min logit with target
        // w t > 1) is +inf in f32, here as on the CPU path, even where v l would fit.
        bool over = false;
        int gshown = 0;
        for (uint64_t k = 0; k < C; ++k) {
            const double z = H::f(in.z[i * C + k]);
            const double t = k == a ? ta : (k == b ? tb : toff);
            const double w = c.pos_weight ? (double)in.pw[k] : 1.0;
            const double v = c.weight ? (double)in.w[k] : 1.0;
            const double cw = 1 + (w - 1) * t;
            const double e = std::exp(-std::fabs(z)), sp = std::log1p(e);
            // A zero weight leaves its product out unless the other factor is NaN.
            const bool nan = std::isnan(z);
            const double lin = z >= 0 ? ((1 - t) != 0 ? (1 - t) * z : 0.0) : (w * t != 0 || nan ? -w * t * z : 0.0);
            const double l = cw * sp + lin;
            const double vl = v != 0 || std::isnan(l) ? v * l : 0.0;
            over |= v != 0 && std::fabs(l) > 0x1.fffffep127;
            L_i += vl;
            labs += std::fabs(vl);
            if (v != 0) lerr += std::fabs(v) * (6 * U * (std::fabs(lin) + std::fabs(cw) * sp) + 1e-38);
            if (c.mode == FWD) continue;
            const double sig = z >= 0 ? 1 / (1 + e) : e / (1 + e);
            const double gx = v * (cw * sig - w * t) * scale;
            const double gtol = 8 * U * std::fabs(v * scale) * (std::fabs(cw * sig) + std::fabs(w * t)) +
                                H::rnd_rel * std::fabs(gx) + H::rnd_abs + 1e-40;
            const double got_g = H::f(o.grad[i * C + k]);
            if ((std::isnan(gx) ? !std::isnan(got_g) : !close(got_g, gx, gtol)) && gshown++ < 2)
                check(false, what + fmt(": grad[%u, %llu] is %.9g, expected %.9g (tol %.3g, z %.9g, t %g, w %g, v %g)", i,
                                        (unsigned long long)k, got_g, gx, gtol, z, t, w, v));
        }
        if (c.mode != FWD) check(gshown == 0, what + fmt(": gradient of row %u", i));
        const double tol = lerr + n_ops * U * labs + 1e-37;
        const float got = o.losses[i];
        ref_sum += L_i;
        ref_tol += tol;
        if (std::isnan(L_i)) {
            ref_finite = false;
            if (!std::isnan(got) && shown++ < 3) check(false, what + fmt(": loss of row %u is %.9g, expected NaN", i, got));
        } else if (!std::isfinite(L_i) || std::fabs(L_i) > 0x1.fffffep127 || over) {
            ref_finite = false;
            // +inf (a weighted -inf logit, or a sum past the f32 range): +inf.
            if (!(got == INFINITY) && shown++ < 3)
                check(false, what + fmt(": loss of row %u is %.9g, expected %g", i, got, L_i));
        } else if (!close(got, L_i, tol) && shown++ < 3) {
            check(false, what + fmt(": loss of row %u is %.9g, expected %.9g (tol %.3g)", i, got, L_i, tol));
        }
    }
    check(shown == 0, what + ": per-sample losses");
    check(o.flags[0] == bad_rows, what + fmt(": %u rows flagged, %u have an out-of-range label", o.flags[0], bad_rows));
    check(o.flags[1] == 0, what + fmt(": the block counter was left at %u", o.flags[1]));

    // Reduced loss: the kernel's own per-sample losses, and the reference.
    const uint64_t T = L.block ? L.threads : BCE_NT;
    const double n_red = (double)((c.B + T - 1) / T) + 5 + (double)T / 32 + 1;
    double ksum = 0, kabs = 0;
    for (float v : o.losses) ksum += v, kabs += std::fabs(v);
    const double div = c.reduction == 1 ? 1.0 : count;
    const double want = ksum / div;
    const double tol_red = n_red * U * kabs / div + 2 * U * std::fabs(want);
    if (!std::isfinite(ksum) || std::fabs(ksum) > 0x1.fffffep127 * (1 - 1e-6))
        check(!std::isfinite(o.loss) || close(o.loss, want, tol_red),
              what + fmt(": reduced loss %.9g of losses summing to %.9g", o.loss, ksum));
    else
        check(close(o.loss, want, tol_red),
              what + fmt(": reduced loss %.9g, the kernel's per-sample losses give %.9g (tol %.3g)", o.loss, want, tol_red));
    if (bad_rows == 0 && ref_finite && std::isfinite(o.loss))
        check(close(o.loss, ref_sum / div, tol_red + ref_tol / div),
              what + fmt(": reduced loss %.9g, reference %.9g", o.loss, ref_sum / div));

    // Nothing written outside the outputs.
    const uint64_t n = C * c.B;
    if (c.mode != IN_PLACE)
        check(std::memcmp(o.logits.data() + c.zoff, in.z.data(), n * sizeof(B)) == 0, what + ": the logits changed");
    bool untouched = true;
    for (size_t k = 0; k < c.zoff; ++k) untouched &= o.logits[k] == (B)0;
    for (const B v : o.before) untouched &= v == sentinel<H>();
    check(untouched, what + ": wrote before its view");

    if (c.orders) {
        const int blocks[] = {1, 2, 0}, threads[] = {1, 3, 2};
        for (int v = 0; v < 3; ++v) {
            const Out<H> p = execute<H, K>(c, L, in, blocks[v], threads[v], c.seed * 7919 + v, what);
            if (!p.ok) return;
            check(std::memcmp(&p.loss, &o.loss, 4) == 0 && std::memcmp(p.losses.data(), o.losses.data(), c.B * 4) == 0 &&
                      p.grad == o.grad && p.flags[0] == o.flags[0] && p.flags[1] == 0,
                  what + fmt(": results differ in order %d", v));
        }
    }
}

template <class H, class K>
void bce_cases() {
    uint64_t seed = 3000 * sizeof(typename H::B);
    const size_t odd = H::VE == 4 ? 1 : 3;
    for (const uint64_t C : {1, 3, 7, 8, 9, 17, 33, 100, 257, 1000, 1031, 4099}) {
        const bool small = C <= 300;
        // The host's launch: every option once, in turns.
        for (int v = 0; v < 8; ++v) {
            BceCase c;
            c.C = C;
            c.B = small ? 9 : 5;
            c.mode = (Mode)(v % 4);
            c.reduction = v % 3;
            c.up_kind = c.reduction == 2 ? (v % 2 ? 2 : 0) : (v % 2);
            c.up = v % 2 ? 0.75f : 1.0f;
            c.eps = v % 3 == 1 ? 0.0f : 0.1f;
            c.weight = v % 2 == 0;
            c.pos_weight = v % 4 < 2;
            c.sum_classes = v % 5 == 1;
            c.has_thr = v >= 4;
            c.thr = v == 7 ? 0.05f : 0.2f;
            c.boundary = v == 5 || v == 6;
            c.masked = v % 4;
            c.zoff = v % 3 == 0 ? odd : 0;
            c.goff = c.mode == GRAD_SHIFTED ? (c.zoff == 0 ? odd : 0) : c.zoff;
            c.orders = v == 0 || v == 5;
            c.seed = ++seed;
            run_bce<H, K>(c);
        }
        // The other strategy and other lane counts, masked logits, weights, threshold.
        for (int k = 0; k < 2; ++k) {
            BceCase c;
            c.C = C;
            c.B = 7;
            c.kernel = k;
            c.group = C < 40 ? 2 : 32;
            c.threads = C < 1000 ? 64 : 256;
            c.mode = k ? IN_PLACE : GRAD;
            c.weight = c.pos_weight = true;
            c.has_thr = k == 1;
            c.masked = 3;
            c.force_grid = k ? 2 : 0;
            c.orders = true;
            c.seed = ++seed;
            run_bce<H, K>(c);
        }
        // NaN logits, with weights (some 0) and a threshold: NaN, never a finite loss.
        {
            BceCase c;
            c.C = C;
            c.B = 4;
            c.weight = c.pos_weight = c.has_thr = true;
            c.masked = 4;
            c.seed = ++seed;
            run_bce<H, K>(c);
        }
        // Out-of-range labels.
        BceCase c;
        c.C = C;
        c.B = 5;
        c.bad_labels = true;
        c.seed = ++seed;
        run_bce<H, K>(c);
    }
    // A large batch through bce_warp with a smaller grid, and more rows than the last block's
    // threads (each thread of bce_finish sums several).
    BceCase c;
    c.C = 10;
    c.B = 600;
    c.force_grid = 3;
    c.weight = true;
    c.seed = ++seed;
    run_bce<H, K>(c);
    c.C = 1000;
    c.B = 40;
    c.mode = IN_PLACE;
    c.force_grid = 0;
    c.orders = true;
    c.seed = ++seed;
    run_bce<H, K>(c);
}

}  // namespace

void test_mixup_bce() {
    bce_cases<HF32, F32>();
    bce_cases<HF16, F16>();
    bce_cases<HBF16, BF16>();
}
