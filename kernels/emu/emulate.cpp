// Runs the mix and soft-target kernels on the host (kernels/emu/shim.h) against independently
// written expected results: every dtype, awkward row lengths, views at odd offsets, in place
// and out of place, permutations, pairs, CutMix in NCHW and NHWC. Built with
// AddressSanitizer by scripts/emulate.sh; any read or write outside a buffer aborts. Prints
// "N passed, M failed" last.
#include "shim.h"

#include "../common.cuh"
#define MIXUP_ALL 1
#include "../mix.cu"
#include "../soft_targets.cu"

#include <algorithm>
#include <functional>
#include <random>
#include <string>
#include <vector>

static int passed = 0, failed = 0;

static void check(bool ok, const std::string& what) {
    if (ok) {
        ++passed;
    } else {
        ++failed;
        if (failed < 30) std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    }
}

template <class K>
static void launch(u64 items, unsigned block, K kernel) {
    const unsigned grid = (unsigned)std::min<u64>(std::max<u64>(items, 1), (1ull << 31) - 1);
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned b = 0; b < grid; ++b)
        for (unsigned t = 0; t < block; ++t) {
            blockIdx = {b, 0, 0};
            threadIdx = {t, 0, 0};
            kernel();
        }
}

// Independent host conversions (as the `half` crate and `u8::from_f32` define them).
struct HF32 { typedef u32 B; static float f(B b) { float v; memcpy(&v, &b, 4); return v; }
    static B r(float v) { B b; memcpy(&b, &v, 4); return b; } static const char* name() { return "f32"; } static constexpr int VE = 4; };
struct HF16 { typedef u16 B; static float f(B b) { _Float16 h; memcpy(&h, &b, 2); return (float)h; }
    static B r(float v) { _Float16 h = (_Float16)v; B b; memcpy(&b, &h, 2); return b; } static const char* name() { return "f16"; } static constexpr int VE = 8; };
struct HBF16 { typedef u16 B; static float f(B b) { u32 x = (u32)b << 16; float v; memcpy(&v, &x, 4); return v; }
    static B r(float v) {
        u32 x; memcpy(&x, &v, 4);
        if ((x & 0x7fffffffu) > 0x7f800000u) return (B)((x >> 16) | 0x40u);
        const u32 rb = 0x8000u;
        return (B)(((x & rb) && (x & (3 * rb - 1))) ? (x >> 16) + 1 : (x >> 16));
    }
    static const char* name() { return "bf16"; } static constexpr int VE = 8; };
struct HU8 { typedef u8 B; static float f(B b) { return (float)b; }
    static B r(float v) { if (std::isnan(v)) return 0; float q = std::nearbyint(v); return (B)std::min(255.0f, std::max(0.0f, q)); }
    static const char* name() { return "u8"; } static constexpr int VE = 16; };

struct Plan {
    std::vector<PlanEntry> e;
    bool involution = false;
};

static Plan make_plan(const std::vector<u32>& partner, const std::vector<float>& lam,
                      const std::vector<int>& cut, u32 h, u32 w, std::mt19937& rng) {
    Plan p;
    for (size_t i = 0; i < partner.size(); ++i) {
        PlanEntry x{};
        x.partner = partner[i];
        x.lam = lam[i];
        if (cut[i] && h > 0) {
            x.cut = 1;
            x.y0 = rng() % h; x.y1 = x.y0 + rng() % (h - x.y0 + 1);
            x.x0 = rng() % w; x.x1 = x.x0 + rng() % (w - x.x0 + 1);
            if (i % 5 == 1) { x.y0 = 0; x.y1 = h; x.x0 = 0; x.x1 = w; }
        }
        p.e.push_back(x);
    }
    p.involution = true;
    for (size_t i = 0; i < partner.size(); ++i) p.involution &= partner[partner[i]] == i;
    return p;
}

// Entries, then the pair leaders packed 8 per entry (src/cuda/plan.rs `stage`).
static std::vector<PlanEntry> staged(const Plan& p, u64& pairs) {
    std::vector<PlanEntry> out = p.e;
    std::vector<u32> lead;
    if (p.involution)
        for (u32 i = 0; i < p.e.size(); ++i)
            if (i <= p.e[i].partner) lead.push_back(i);
    pairs = lead.size();
    for (size_t k = 0; k < lead.size(); k += 8) {
        u32 w[8] = {0};
        for (size_t j = 0; j < 8 && k + j < lead.size(); ++j) w[j] = lead[k + j];
        PlanEntry x;
        memcpy(&x, w, 32);
        out.push_back(x);
    }
    return out;
}

// layout: 0 rows(len=d), 1 nchw, 2 nhwc
template <class H>
static std::vector<typename H::B> expected_mix(const Plan& p, u32 layout, u64 d, u32 c, u32 h, u32 w,
                                               const std::vector<typename H::B>& x) {
    std::vector<typename H::B> out(x.size());
    for (size_t i = 0; i < p.e.size(); ++i) {
        const PlanEntry& e = p.e[i];
        for (u64 k = 0; k < d; ++k) {
            auto a = x[i * d + k], b = x[(u64)e.partner * d + k];
            if (e.cut && layout != 0) {
                u64 pix = layout == 1 ? k % ((u64)h * w) : k / c;
                u64 y = pix / w, xx = pix % w;
                bool in = y >= e.y0 && y < e.y1 && xx >= e.x0 && xx < e.x1;
                out[i * d + k] = in ? b : a;
            } else {
                volatile float lam = e.lam;
                float mu = 1.0f - lam;
                float v = lam * H::f(a) + mu * H::f(b);
                out[i * d + k] = H::r(v);
            }
        }
    }
    return out;
}

// A buffer of exactly `off + n` elements, 16-byte aligned, so ASan catches any access past the
// end; the view starts at `off`.
template <class B>
struct Buf {
    B* base;
    size_t off, n;
    Buf(size_t off_, size_t n_, B fill) : off(off_), n(n_) {
        // Exact size (malloc is 16-byte aligned, checked), so an access past the end is caught.
        base = (B*)malloc(std::max<size_t>(1, (off + n) * sizeof(B)));
        if (((uintptr_t)base & 15u) != 0) std::abort();
        for (size_t i = 0; i < off + n; ++i) base[i] = fill;
    }
    ~Buf() { free(base); }
    B* v() { return base + off; }
};

template <class H, class K>
static void test_mix(std::mt19937& rng) {
    typedef typename H::B B;
    struct L { u32 layout; u64 d; u32 c, h, w; };
    std::vector<L> layouts = {{0, 1, 0, 0, 0}, {0, 3, 0, 0, 0}, {0, 63, 0, 0, 0}, {0, 4097, 0, 0, 0},
                              {1, 105, 3, 5, 7}, {2, 105, 3, 5, 7}, {1, 3 * 32 * 32, 3, 32, 32}, {2, 4 * 17 * 9, 4, 17, 9}};
    for (auto& L : layouts) {
        for (u32 batch : {1u, 2u, 5u, 8u}) {
            const u64 n = batch * L.d;
            std::vector<B> x(n);
            for (auto& v : x) v = H::r(std::uniform_real_distribution<float>(-4, 4)(rng));
            if (std::string(H::name()) == "u8") for (auto& v : x) v = (B)(rng() % 256);
            std::vector<u32> perm(batch), prs(batch), flip(batch), ident(batch);
            for (u32 i = 0; i < batch; ++i) perm[i] = prs[i] = ident[i] = i, flip[i] = batch - 1 - i;
            std::shuffle(perm.begin(), perm.end(), rng);
            std::vector<u32> order = ident;
            std::shuffle(order.begin(), order.end(), rng);
            for (u32 k = 0; k + 1 < batch; k += 2) prs[order[k]] = order[k + 1], prs[order[k + 1]] = order[k];
            std::vector<float> lam(batch);
            for (u32 i = 0; i < batch; ++i) lam[i] = i % 7 == 3 ? 1.0f : std::uniform_real_distribution<float>(0, 1)(rng);
            std::vector<int> none(batch, 0), some(batch);
            for (u32 i = 0; i < batch; ++i) some[i] = i % 4 != 0;
            struct P { const char* name; Plan p; };
            std::vector<P> plans = {{"identity", make_plan(ident, lam, none, L.h, L.w, rng)},
                                    {"perm", make_plan(perm, lam, none, L.h, L.w, rng)},
                                    {"pairs", make_plan(prs, lam, none, L.h, L.w, rng)},
                                    {"flip", make_plan(flip, lam, none, L.h, L.w, rng)},
                                    {"cut pairs", make_plan(prs, lam, some, L.h ? L.h : 4, L.w ? L.w : 4, rng)},
                                    {"cut perm", make_plan(perm, lam, some, L.h ? L.h : 4, L.w ? L.w : 4, rng)}};
            for (auto& P : plans) {
                u64 pairs = 0;
                std::vector<PlanEntry> dev = staged(P.p, pairs);
                const u64 ve = H::VE;
                const u64 chunks = std::max<u64>(1, (L.d + 1024 * ve - 1) / (1024 * ve));
                auto want = expected_mix<H>(P.p, L.layout, L.d, L.c, L.h, L.w, x);
                for (auto [xo, oo] : {std::pair<size_t, size_t>{0, 0}, {1, 1}, {3, 1}, {0, 5}, {2, 0}}) {
                    Buf<B> xs(xo, n, 0), os(oo, n, (B)7);
                    memcpy(xs.v(), x.data(), n * sizeof(B));
                    MixArgs g{};
                    g.x = (u64)xs.v(); g.out = (u64)os.v(); g.plan = (u64)dev.data();
                    g.row_len = L.d; g.chunks = chunks; g.plane = (u64)L.h * L.w;
                    g.layout = L.layout; g.channels = L.c; g.height = L.h; g.width = L.w; g.batch = batch;
                    const bool use_pairs = P.p.involution;
                    g.items = (use_pairs ? pairs : batch) * chunks;
                    std::string what = std::string(H::name()) + " " + P.name + " layout " + std::to_string(L.layout) +
                                       " d " + std::to_string(L.d) + " B " + std::to_string(batch) + " off " +
                                       std::to_string(xo) + "," + std::to_string(oo);
                    if (use_pairs) launch(g.items, MIX_NT, [&] { mix_pairs<K>(g); });
                    else launch(g.items, MIX_NT, [&] { mix_gather<K>(g); });
                    check(memcmp(os.v(), want.data(), n * sizeof(B)) == 0, what + " out of place");
                    bool untouched = true;
                    for (size_t i = 0; i < oo; ++i) untouched &= os.base[i] == (B)7;
                    check(untouched, what + " wrote before its view");
                    if (use_pairs) {
                        Buf<B> xi(xo, n, 0);
                        memcpy(xi.v(), x.data(), n * sizeof(B));
                        g.x = g.out = (u64)xi.v();
                        launch(g.items, MIX_NT, [&] { mix_pairs<K>(g); });
                        check(memcmp(xi.v(), want.data(), n * sizeof(B)) == 0, what + " in place");
                    }
                }
            }
        }
    }
}

template <class H, class K>
static void test_soft(std::mt19937& rng) {
    typedef typename H::B B;
    for (u64 c : {1ull, 2ull, 3ull, 10ull, 63ull, 1000ull, 4097ull}) {
        for (u32 batch : {1u, 2u, 5u}) {
            for (float eps : {0.0f, 0.1f}) {
                std::vector<u32> labels(batch), perm(batch);
                for (u32 i = 0; i < batch; ++i) labels[i] = i % 3 == 1 ? 0 : rng() % c, perm[i] = i;
                std::shuffle(perm.begin(), perm.end(), rng);
                std::vector<float> lam(batch);
                for (auto& l : lam) l = std::uniform_real_distribution<float>(0, 1)(rng);
                std::vector<int> none(batch, 0);
                Plan p = make_plan(perm, lam, none, 0, 0, rng);
                const float off = eps / (float)c;
                std::vector<B> want(batch * c);
                for (u32 i = 0; i < batch; ++i) {
                    const u32 a = labels[i], b = labels[perm[i]];
                    volatile float keep = 1.0f - eps, l = lam[i];
                    float mu = 1.0f - l;
                    float ta = keep * l + off, tb = keep * mu + off;
                    if (a == b) ta = tb = keep * (l + mu) + off;
                    for (u64 k = 0; k < c; ++k) want[i * c + k] = H::r(k == a ? ta : (k == b ? tb : off));
                }
                const u64 chunks = std::max<u64>(1, (c + 1024 * H::VE - 1) / (1024 * H::VE));
                for (size_t oo : {0, 1, 3}) {
                    Buf<B> os(oo, batch * c, (B)5);
                    u32 flags[2] = {0, 0};
                    SoftArgs g{};
                    g.out = (u64)os.v(); g.labels = (u64)labels.data(); g.plan = (u64)p.e.data(); g.flags = (u64)flags;
                    g.items = batch * chunks; g.classes = c; g.chunks = chunks; g.eps = eps; g.off = off;
                    launch(g.items, SOFT_NT, [&] { soft_targets<K>(g); });
                    std::string what = std::string("soft ") + H::name() + " C " + std::to_string(c) + " B " +
                                       std::to_string(batch) + " eps " + std::to_string(eps) + " off " + std::to_string(oo);
                    check(memcmp(os.v(), want.data(), want.size() * sizeof(B)) == 0, what);
                    check(flags[0] == 0, what + " flagged a valid label");
                }
            }
        }
    }
    // An out-of-range label is flagged and nothing is read through it.
    std::vector<u32> labels = {1000000, 1};
    std::vector<u32> partner = {1, 0};
    std::vector<float> lam = {0.5f, 0.5f};
    std::vector<int> none(2, 0);
    Plan p = make_plan(partner, lam, none, 0, 0, rng);
    Buf<B> os(0, 8, 0);
    u32 flags[2] = {0, 0};
    SoftArgs g{};
    g.out = (u64)os.v(); g.labels = (u64)labels.data(); g.plan = (u64)p.e.data(); g.flags = (u64)flags;
    g.items = 2; g.classes = 4; g.chunks = 1; g.eps = 0; g.off = 0;
    launch(g.items, SOFT_NT, [&] { soft_targets<K>(g); });
    check(flags[0] == 2, std::string("soft ") + H::name() + " bad label counted once per row");
}

int main() {
    std::mt19937 rng(42);
    test_mix<HF32, F32>(rng);
    test_mix<HU8, U8>(rng);
    test_mix<HF16, F16>(rng);
    test_mix<HBF16, BF16>(rng);
    test_soft<HF32, F32>(rng);
    test_soft<HF16, F16>(rng);
    test_soft<HBF16, BF16>(rng);
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
