// Dump every f32/f16 tensor llama.cpp computes for a prompt and a few greedy
// steps, to compare realizar's ggml-compatible path with llama.cpp tensor by
// tensor. Built against target/llamacpp (scripts/llamacpp-crosscheck.sh).
//   ggml_dump MODEL OUTDIR ID,ID,... NGEN
#include "llama.h"
#include "ggml.h"
#include "ggml-backend.h"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static std::string g_dir;
static int g_step = 0;

static bool cb(struct ggml_tensor * t, bool ask, void *) {
    if (ask) return true;
    if (t->type != GGML_TYPE_F32 && t->type != GGML_TYPE_F16) return true;
    if (!ggml_is_contiguous(t)) return true;
    std::string name = t->name;
    for (auto & c : name) if (!isalnum((unsigned char) c) && c != '-' && c != '_') c = '_';
    char path[1024];
    snprintf(path, sizeof path, "%s/%d_%s.bin", g_dir.c_str(), g_step, name.c_str());
    std::vector<char> buf(ggml_nbytes(t));
    ggml_backend_tensor_get(t, buf.data(), 0, buf.size());
    FILE * f = fopen(path, "wb");
    int32_t hdr[6] = {(int32_t) t->type, (int32_t) t->op, (int32_t) t->ne[0], (int32_t) t->ne[1], (int32_t) t->ne[2], (int32_t) t->ne[3]};
    fwrite(hdr, sizeof hdr, 1, f);
    fwrite(buf.data(), 1, buf.size(), f);
    fclose(f);
    return true;
}

int main(int argc, char ** argv) {
    if (argc < 5) { fprintf(stderr, "usage: %s MODEL OUTDIR IDS NGEN\n", argv[0]); return 1; }
    g_dir = argv[2];
    std::vector<llama_token> toks;
    for (char * p = strtok(argv[3], ","); p; p = strtok(nullptr, ",")) toks.push_back(atoi(p));
    int ngen = atoi(argv[4]);
    llama_backend_init();
    auto mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    auto cp = llama_context_default_params();
    cp.n_ctx = 4096; cp.n_batch = 2048; cp.n_ubatch = 512; cp.n_seq_max = 1;
    cp.n_threads = 2; cp.n_threads_batch = 2;
    if (!getenv("NO_CB")) cp.cb_eval = cb;
    llama_context * ctx = llama_init_from_model(model, cp);
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    // SPLIT=N: evaluate the last N prompt tokens as a batch of their own, as
    // llama-server does for sliding-window models (N = 4); dumps of that
    // first part go to step -1.
    int split = getenv("SPLIT") ? atoi(getenv("SPLIT")) : 0;
    if (split > 0 && (int) toks.size() > split) {
        g_step = -1;
        llama_batch first = llama_batch_get_one(toks.data(), toks.size() - split);
        if (llama_decode(ctx, first)) { fprintf(stderr, "decode failed\n"); return 1; }
        toks.erase(toks.begin(), toks.end() - split);
    }
    llama_batch batch = llama_batch_get_one(toks.data(), toks.size());
    for (int s = 0; s <= ngen; s++) {
        g_step = s;
        if (llama_decode(ctx, batch)) { fprintf(stderr, "decode failed\n"); return 1; }
        float * lg = llama_get_logits_ith(ctx, -1);
        int best = 0;
        for (int i = 1; i < n_vocab; i++) if (lg[i] > lg[best]) best = i;
        printf("%d\n", best);
        char path[1024];
        snprintf(path, sizeof path, "%s/%d_LOGITS.f32", g_dir.c_str(), s);
        FILE * f = fopen(path, "wb"); fwrite(lg, 4, n_vocab, f); fclose(f);
        static llama_token next; next = best;
        batch = llama_batch_get_one(&next, 1);
    }
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
