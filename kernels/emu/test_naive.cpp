// The naive (unfused) kernels of kernels/naive.cu on the host, launched as src/cuda/naive.rs
// launches them (element-wise kernels: 256 threads, one block per 256 elements; per-row kernels:
// one block of 256 per row; the reduction: one block of 1024), against the same expected values
// as the fused kernels: the naive path is the benchmark's baseline and must be correct too.
#include "check.h"

#include "../common.cuh"
#define MIXUP_ALL 1
#include "../naive.cu"
#include "mix_ref.h"

namespace {

constexpr double U = 0x1p-24;
constexpr double EXPF = 0x1p-23;  // CUDA expf: at most 2 ulp

emu::Launch elementwise(uint64_t n) {
    emu::Launch l;
    l.grid = grid_for((n + 255) / 256);
    l.block = 256;
    return l;
}
emu::Launch per_row(uint64_t rows) {
    emu::Launch l;
    l.grid = grid_for(rows);
    l.block = 256;
    return l;
}

template <class K>
struct Naive;
#define NAIVE_ENTRIES(K, dt)                                                                                     \
    template <>                                                                                                  \
    struct Naive<K> {                                                                                            \
        typedef K::B B;                                                                                          \
        static void gather(const B* x, B* t, const PlanEntry* p, u64 d, u64 n) { naive_gather_##dt(x, t, p, d, n); } \
        static void lerp(const B* x, const B* t, B* o, const PlanEntry* p, u64 d, u64 n, u32 im) {               \
            naive_lerp_##dt(x, t, o, p, d, n, im);                                                               \
        }                                                                                                        \
        static void paste(const B* t, B* o, const PlanEntry* p, u64 d, u64 n, u32 l, u32 c, u32 h, u32 w) {     \
            naive_paste_##dt(t, o, p, d, n, l, c, h, w);                                                         \
        }                                                                                                        \
        NAIVE_FLOAT_ENTRIES(dt)                                                                                  \
    };
#define NAIVE_FLOAT_ENTRIES(dt)                                                                               \
    static void blend(const float* a, const float* b, B* o, const PlanEntry* p, u64 c, u64 n) {              \
        naive_blend_##dt(a, b, o, p, c, n);                                                                    \
    }                                                                                                          \
    static void log_softmax(const B* z, float* lp, u64 c, u64 r) { naive_log_softmax_##dt(z, lp, c, r); }     \
    static void grad(const float* lp, const float* t, B* g, float s, u64 n) { naive_grad_##dt(lp, t, g, s, n); }
NAIVE_ENTRIES(F32, f32)
NAIVE_ENTRIES(F16, f16)
NAIVE_ENTRIES(BF16, bf16)
#undef NAIVE_FLOAT_ENTRIES
#define NAIVE_FLOAT_ENTRIES(dt)
NAIVE_ENTRIES(U8, u8)

// Gather, lerp, paste (src/cuda/naive.rs `mix`): the same result, bit for bit, as the fused mix.
template <class H, class K>
void test_mix(std::mt19937& rng) {
    typedef typename H::B B;
    struct L {
        u32 layout;
        u64 d;
        u32 c, h, w;
    };
    const L layouts[] = {{0, 63, 0, 0, 0}, {0, 4097, 0, 0, 0}, {1, 105, 3, 5, 7}, {2, 105, 3, 5, 7}};
    for (const L& lay : layouts) {
        for (u32 batch : {1u, 2u, 5u}) {
            const u64 n = batch * lay.d;
            std::vector<B> x(n);
            for (auto& v : x) v = H::r(std::uniform_real_distribution<float>(-4, 4)(rng));
            if (sizeof(B) == 1)
                for (auto& v : x) v = (B)(rng() % 256);
            std::vector<u32> perm(batch);
            std::iota(perm.begin(), perm.end(), 0u);
            std::shuffle(perm.begin(), perm.end(), rng);
            std::vector<float> lam(batch);
            for (u32 i = 0; i < batch; ++i) lam[i] = std::uniform_real_distribution<float>(0, 1)(rng);
            std::vector<int> none(batch, 0), some(batch);
            for (u32 i = 0; i < batch; ++i) some[i] = i % 4 != 0;
            const u32 h = lay.h ? lay.h : 4, w = lay.w ? lay.w : 4;
            for (int cut = 0; cut < 2; ++cut) {
                const Plan p = make_plan(perm, lam, cut ? some : none, h, w, rng);
                const auto want = expected_mix<H>(p, lay.layout, lay.d, lay.c, lay.h, lay.w, x);
                Buf<PlanEntry> plan(0, batch, PlanEntry{});
                std::memcpy(plan.v(), p.e.data(), batch * sizeof(PlanEntry));
                Buf<B> xs(1, n, 0), tmp(0, n, 0), out(0, n, (B)7);
                std::memcpy(xs.v(), x.data(), n * sizeof(B));
                const u32 image = lay.layout != 0;
                const std::string what = fmt("naive mix %s layout %u d %llu B %u%s", H::name(), lay.layout,
                                             (unsigned long long)lay.d, batch, cut ? " cutmix" : "");
                run(elementwise(n), [&] { Naive<K>::gather(xs.v(), tmp.v(), plan.v(), lay.d, n); }, what);
                run(elementwise(n), [&] { Naive<K>::lerp(xs.v(), tmp.v(), out.v(), plan.v(), lay.d, n, image); }, what);
                bool has_cut = false;
                for (const auto& e : p.e) has_cut |= e.cut != 0;
                if (image && has_cut)
                    run(elementwise(n),
                        [&] { Naive<K>::paste(tmp.v(), out.v(), plan.v(), lay.d, n, lay.layout, lay.c, lay.h, lay.w); },
                        what);
                check(std::memcmp(out.v(), want.data(), n * sizeof(B)) == 0, what);
            }
        }
    }
}

struct Targets {
    Buf<float> y1, y2;
    Targets(u64 n) : y1(0, n, NAN), y2(0, n, NAN) {}
};

// The two one-hot tensors (src/cuda/naive.rs `one_hots`).
void one_hots(Targets& t, const u32* labels, const PlanEntry* plan, u64 C, u64 B, float eps, const std::string& what) {
    const u64 n = C * B;
    const float off = eps / (float)C;
    const float on = 1.0f - eps + off;
    for (u32 partner : {0u, 1u}) {
        float* y = partner ? t.y2.v() : t.y1.v();
        run(elementwise(n), [&] { naive_one_hot(y, labels, plan, C, n, off, on, partner); }, what);
    }
}

struct Rows {
    Buf<u32> labels;
    Buf<PlanEntry> plan;
    Rows(u32 B) : labels(0, B, 0), plan(0, B, PlanEntry{}) {}
};

void fill_rows(Rows& r, u64 C, u32 B, std::mt19937& rng) {
    std::vector<u32> perm(B);
    std::iota(perm.begin(), perm.end(), 0u);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (u32 i = 0; i < B; ++i) {
        r.labels.v()[i] = i == 0 ? (u32)(C - 1) : (u32)(rng() % C);
        PlanEntry e{};
        e.partner = perm[i];
        e.lam = i == 1 ? 1.0f : std::uniform_real_distribution<float>(0, 1)(rng);
        r.plan.v()[i] = e;
    }
    if (B >= 3) r.labels.v()[perm[2]] = r.labels.v()[2];
}

double target(const Rows& r, u32 i, u64 k, u64 C, double eps) {
    const PlanEntry& e = r.plan.base[i];
    const u32 a = r.labels.base[i], b = r.labels.base[e.partner];
    const double lam = e.lam;
    return (1 - eps) * (lam * (k == a) + (1 - lam) * (k == b)) + eps / (double)C;
}

// Two one-hots and a blend (src/cuda/naive.rs `soft_targets`).
template <class H, class K>
void test_soft(std::mt19937& rng) {
    typedef typename H::B B;
    for (u64 C : {1ull, 3ull, 33ull, 1000ull}) {
        for (u32 batch : {1u, 5u}) {
            for (float eps : {0.0f, 0.1f}) {
                const u64 n = C * batch;
                Rows r(batch);
                fill_rows(r, C, batch, rng);
                Targets t(n);
                Buf<B> out(0, n, (B)5);
                const std::string what = fmt("naive soft %s C %llu B %u eps %g", H::name(), (unsigned long long)C, batch, eps);
                one_hots(t, r.labels.v(), r.plan.v(), C, batch, eps, what);
                run(elementwise(n), [&] { Naive<K>::blend(t.y1.v(), t.y2.v(), out.v(), r.plan.v(), C, n); }, what);
                int bad = 0;
                for (u32 i = 0; i < batch; ++i)
                    for (u64 k = 0; k < C; ++k) {
                        const double e = target(r, i, k, C, eps), got = H::f(out.v()[i * C + k]);
                        // on/off and the blend in f32: 5 roundings; then the storage rounding.
                        const double tol = 5 * U * e + H::rnd_rel * e + H::rnd_abs;
                        if (!close(got, e, tol) && bad++ < 2)
                            check(false, what + fmt(": [%u, %llu] is %.9g, expected %.9g", i, (unsigned long long)k, got, e));
                    }
                check(bad == 0, what);
            }
        }
    }
}

// Soft targets, log-softmax, row loss, reduction, gradient (src/cuda/naive.rs `mixup_ce`).
template <class H, class K>
void test_ce(std::mt19937& rng) {
    typedef typename H::B B;
    struct C_ {
        u64 C;
        u32 B;
        int red;  // 0 Mean, 1 Sum
        float eps;
        bool huge;
        // > 0: the per-row kernels get one block for all rows (their grid-stride loops, reached
        // beyond 2^31 - 1 rows) and run with this thread policy (2: lowest first).
        int one_block;
    };
    const C_ cases[] = {{1, 2, 0, 0.1f, false, 0},    {3, 5, 1, 0.0f, false, 0},   {33, 5, 0, 0.1f, false, 0},
                        {1000, 3, 0, 0.1f, false, 0}, {1000, 2, 1, 0.1f, true, 0}, {2049, 2, 1, 0.1f, false, 0},
                        {300, 64, 0, 0.1f, false, 0}, {300, 5, 0, 0.1f, false, 2}, {300, 5, 0, 0.1f, false, 3}};
    for (const C_& cs : cases) {
        const u64 C = cs.C, n = C * cs.B;
        const std::string what = fmt("naive ce %s C %llu B %u %s eps %g%s%s", H::name(), (unsigned long long)C, cs.B,
                                     cs.red ? "Sum" : "Mean", cs.eps, cs.huge ? " huge" : "",
                                     cs.one_block ? fmt(" one block, policy %d", cs.one_block - 1).c_str() : "");
        auto rows = [&](const std::function<void()>& k) {
            if (cs.one_block == 0) return run(per_row(cs.B), k, what);
            emu::Launch l = per_row(1);
            l.thread_order = cs.one_block - 1;
            run_as(l, k, what);
        };
        Rows r(cs.B);
        fill_rows(r, C, cs.B, rng);
        Buf<B> z(1, n, 0);
        std::normal_distribution<float> normal(0.0f, 2.0f);
        std::uniform_real_distribution<float> unit(0.0f, 1.0f);
        for (u64 k = 0; k < n; ++k) z.v()[k] = H::r(cs.huge ? 2e4f * unit(rng) - 1e4f : normal(rng));
        Targets tg(n);
        Buf<float> t(0, n, NAN), logp(0, n, NAN), losses(0, cs.B, NAN), loss(0, 1, NAN);
        Buf<B> grad(0, n, (B)0x7e55);
        one_hots(tg, r.labels.v(), r.plan.v(), C, cs.B, cs.eps, what);
        run(elementwise(n), [&] { naive_blend_f32(tg.y1.v(), tg.y2.v(), (u32*)t.v(), r.plan.v(), C, n); }, what);
        rows([&] { Naive<K>::log_softmax(z.v(), logp.v(), C, cs.B); });
        rows([&] { naive_row_loss(logp.v(), t.v(), losses.v(), C, cs.B); });
        emu::Launch one;
        one.block = 1024;
        run(one, [&] { naive_reduce(losses.v(), loss.v(), cs.B, cs.red == 0); }, what);
        const float scale = cs.red == 0 ? 1.0f / (float)cs.B : 1.0f;  // Reduction::grad_factor
        run(elementwise(n), [&] { Naive<K>::grad(logp.v(), t.v(), grad.v(), scale, n); }, what);

        // Per operation: a per-thread chain of C/256, a 5-level butterfly, 8 warps in sequence.
        const double n_ops = (double)((C + 255) / 256) + 5 + 8 + 2;
        double sum = 0, sum_tol = 0, kabs = 0;
        int bad = 0;
        for (u32 i = 0; i < cs.B; ++i) {
            const B* zr = z.v() + (u64)i * C;
            double m = -INFINITY;
            for (u64 k = 0; k < C; ++k) m = std::max(m, (double)H::f(zr[k]));
            // s and the error of its terms: expf's 2 ulp, and the rounding of z - m inside it.
            double s = 0, serr = 0;
            for (u64 k = 0; k < C; ++k) {
                const double d = H::f(zr[k]) - m, e = std::exp(d);
                s += e;
                serr += e * (U * std::fabs(d) + EXPF);
            }
            const double ls = std::log(s), lse = m + ls;
            const double dls = serr / s + n_ops * U + 2 * U * std::fabs(ls);
            double L = 0, Ltol = 0, tabs = 0;
            for (u64 k = 0; k < C; ++k) {
                const double z_ = H::f(zr[k]), tk = target(r, i, k, C, cs.eps), lp = z_ - lse;
                const double dlp = U * std::fabs(z_ - m) + U * std::fabs(lp) + dls;
                L -= tk * lp;
                Ltol += tk * (dlp + 5 * U * std::fabs(lp));
                tabs += tk * std::fabs(lp);
                const double p = std::exp(lp), gx = (p - tk) * scale;
                const double d32 = std::fabs(scale) * (p * (std::expm1(dlp) + EXPF) + 5 * U * tk) + 3 * U * std::fabs(gx);
                const double gtol = d32 + H::rnd_rel * (std::fabs(gx) + d32) + H::rnd_abs;
                const double got = H::f(grad.v()[(u64)i * C + k]);
                if (!close(got, gx, gtol) && bad++ < 2)
                    check(false, what + fmt(": grad[%u, %llu] is %.9g, expected %.9g (tol %.3g)", i,
                                            (unsigned long long)k, got, gx, gtol));
            }
            Ltol += n_ops * U * tabs;
            if (!close(losses.v()[i], L, Ltol) && bad++ < 4)
                check(false, what + fmt(": loss of row %u is %.9g, expected %.9g (tol %.3g)", i, losses.v()[i], L, Ltol));
            sum += L;
            sum_tol += Ltol;
            kabs += std::fabs(losses.v()[i]);
        }
        check(bad == 0, what + ": losses and gradient");
        // naive_reduce: one element per thread, a butterfly, 32 warps in sequence, the division.
        const double div = cs.red == 0 ? (double)cs.B : 1.0;
        const double tol = (sum_tol + (1 + 5 + 32 + 1) * U * kabs) / div + U * std::fabs(sum / div);
        check(close(*loss.v(), sum / div, tol), what + fmt(": reduced loss %.9g, expected %.9g", *loss.v(), sum / div));
    }
}

}  // namespace

void test_naive() {
    std::mt19937 rng(7);
    test_mix<HF32, F32>(rng);
    test_mix<HF16, F16>(rng);
    test_mix<HBF16, BF16>(rng);
    test_mix<HU8, U8>(rng);
    test_soft<HF32, F32>(rng);
    test_soft<HF16, F16>(rng);
    test_soft<HBF16, BF16>(rng);
    test_ce<HF32, F32>(rng);
    test_ce<HF16, F16>(rng);
    test_ce<HBF16, BF16>(rng);
}
