// The mix and soft-target kernels (kernels/mix.cu, kernels/soft_targets.cu) on the host: every
// dtype, awkward row lengths, views at odd offsets, in place and out of place, permutations,
// pairs, CutMix in NCHW and NHWC, against independently written expected results.
#include "check.h"

#include "../common.cuh"
#define MIXUP_ALL 1
#include "../mix.cu"
#include "../soft_targets.cu"
#include "mix_ref.h"

#include <functional>

namespace {

template <class K>
void launch(uint64_t items, unsigned block, K kernel, const std::string& what) {
    emu::Launch l;
    l.grid = grid_for(items);
    l.block = block;
    run(l, kernel, what);
}

template <class H, class K>
void test_mix(std::mt19937& rng) {
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
                    if (use_pairs) launch(g.items, MIX_NT, [&] { mix_pairs<K>(g); }, what);
                    else launch(g.items, MIX_NT, [&] { mix_gather<K>(g); }, what);
                    check(memcmp(os.v(), want.data(), n * sizeof(B)) == 0, what + " out of place");
                    bool untouched = true;
                    for (size_t i = 0; i < oo; ++i) untouched &= os.base[i] == (B)7;
                    check(untouched, what + " wrote before its view");
                    if (use_pairs) {
                        Buf<B> xi(xo, n, 0);
                        memcpy(xi.v(), x.data(), n * sizeof(B));
                        g.x = g.out = (u64)xi.v();
                        launch(g.items, MIX_NT, [&] { mix_pairs<K>(g); }, what);
                        check(memcmp(xi.v(), want.data(), n * sizeof(B)) == 0, what + " in place");
                    }
                }
            }
        }
    }
}

template <class H, class K>
void test_soft(std::mt19937& rng) {
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
                    std::string what = std::string("soft ") + H::name() + " C " + std::to_string(c) + " B " +
                                       std::to_string(batch) + " eps " + std::to_string(eps) + " off " + std::to_string(oo);
                    launch(g.items, SOFT_NT, [&] { soft_targets<K>(g); }, what);
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
    launch(g.items, SOFT_NT, [&] { soft_targets<K>(g); }, "soft bad label");
    check(flags[0] == 2, std::string("soft ") + H::name() + " bad label counted once per row");
}

}  // namespace

void test_mix_and_soft_targets() {
    std::mt19937 rng(42);
    test_mix<HF32, F32>(rng);
    test_mix<HU8, U8>(rng);
    test_mix<HF16, F16>(rng);
    test_mix<HBF16, BF16>(rng);
    test_soft<HF32, F32>(rng);
    test_soft<HF16, F16>(rng);
    test_soft<HBF16, BF16>(rng);
}
