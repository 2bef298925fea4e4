/*
 * raw_capture: the floor `cargo xtask bench` measures llorch-checkpoint against.
 *
 * The least a program can do to capture checkpoints through llama.cpp's eval
 * callback: load the model as the extractor does (no mmap), ask for the named
 * nodes (or every node), copy each to host f32 in memory while the graph runs
 * (strides and f16 respected, the kept extent only), and write them as `.bin`
 * files after the decode. Then the same steady-state timing as the extractor's
 * `--repeat N`: the prompt again N times each way on a cleared cache,
 * alternating a context without callback and the capturing one.
 *
 * usage: raw_capture MODEL NODES TOKENS OUT_DIR THREADS N_CTX REPEAT
 *   NODES   a file: `*` (every node), or lines `name op ne0 ne1 ne2 ne3`
 *   TOKENS  a file: the prompt's token ids, whitespace-separated
 * Prints one JSON line: first_ms, with_ms, without_ms, files, bytes.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

#define MAX_WANTED 4096
#define MAX_CAPTURED 8192
#define MAX_TOKENS 4096

struct wanted {
    char name[GGML_MAX_NAME];
    char op[32];
    int64_t keep[4];
};

struct captured {
    char name[GGML_MAX_NAME];
    int n_dims;
    int64_t ne[4];
    float *data;
};

struct capture {
    bool all;
    int n_wanted;
    struct wanted wanted[MAX_WANTED];
    bool keep_copies;
    int n_captured;
    struct captured captured[MAX_CAPTURED];
    size_t bytes;
    uint8_t *scratch;
    size_t scratch_size;
};

static void die(const char *what) {
    fprintf(stderr, "raw_capture: %s\n", what);
    exit(1);
}

static void quiet(enum ggml_log_level level, const char *text, void *user) {
    (void)level, (void)text, (void)user;
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static const struct wanted *find(const struct capture *c, const struct ggml_tensor *t) {
    for (int i = 0; i < c->n_wanted; i++) {
        if (strcmp(c->wanted[i].name, t->name) == 0 && strcmp(c->wanted[i].op, ggml_op_name(t->op)) == 0) {
            return &c->wanted[i];
        }
    }
    return NULL;
}

static bool convertible(const struct ggml_tensor *t) {
    return t->type == GGML_TYPE_F32 || ggml_get_type_traits(t->type)->to_float != NULL;
}

/* Copies the first keep[d] indices of each dimension of t to f32, row-major. */
static float *copy_to_f32(struct capture *c, const struct ggml_tensor *t, const int64_t keep[4]) {
    size_t nbytes = ggml_nbytes(t);
    if (nbytes > c->scratch_size) {
        c->scratch = realloc(c->scratch, nbytes);
        c->scratch_size = nbytes;
    }
    ggml_backend_tensor_get(t, c->scratch, 0, nbytes);
    const struct ggml_type_traits *traits = ggml_get_type_traits(t->type);
    size_t n = (size_t)(keep[0] * keep[1] * keep[2] * keep[3]);
    float *out = malloc(n * sizeof(float));
    size_t at = 0;
    for (int64_t i3 = 0; i3 < keep[3]; i3++) {
        for (int64_t i2 = 0; i2 < keep[2]; i2++) {
            for (int64_t i1 = 0; i1 < keep[1]; i1++) {
                const uint8_t *row = c->scratch + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
                if (t->nb[0] == traits->type_size && traits->blck_size == 1) {
                    if (t->type == GGML_TYPE_F32) {
                        memcpy(out + at, row, keep[0] * sizeof(float));
                    } else {
                        traits->to_float(row, out + at, keep[0]);
                    }
                    at += keep[0];
                } else {
                    for (int64_t i0 = 0; i0 < keep[0]; i0++, at++) {
                        const uint8_t *e = row + i0 * t->nb[0];
                        if (t->type == GGML_TYPE_F32) {
                            memcpy(out + at, e, sizeof(float));
                        } else {
                            traits->to_float(e, out + at, 1);
                        }
                    }
                }
            }
        }
    }
    return out;
}

static bool on_eval(struct ggml_tensor *t, bool ask, void *user) {
    struct capture *c = user;
    if (ask) {
        return c->all ? convertible(t) : find(c, t) != NULL;
    }
    int64_t keep[4];
    const struct wanted *w = c->all ? NULL : find(c, t);
    for (int d = 0; d < 4; d++) {
        keep[d] = w ? w->keep[d] : t->ne[d];
    }
    float *data = copy_to_f32(c, t, keep);
    if (!c->keep_copies || c->n_captured == MAX_CAPTURED) {
        free(data);
        return true;
    }
    struct captured *k = &c->captured[c->n_captured++];
    snprintf(k->name, sizeof k->name, "%s", t->name);
    k->n_dims = 4;
    while (k->n_dims > 1 && keep[k->n_dims - 1] == 1) {
        k->n_dims--;
    }
    memcpy(k->ne, keep, sizeof keep);
    k->data = data;
    c->bytes += (size_t)(keep[0] * keep[1] * keep[2] * keep[3]) * sizeof(float);
    return true;
}

static void read_nodes(struct capture *c, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) die("cannot read the nodes file");
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '*') {
            c->all = true;
            continue;
        }
        struct wanted *w = &c->wanted[c->n_wanted];
        if (sscanf(line, "%63s %31s %" SCNd64 " %" SCNd64 " %" SCNd64 " %" SCNd64, w->name, w->op, &w->keep[0],
                   &w->keep[1], &w->keep[2], &w->keep[3]) == 6 &&
            c->n_wanted + 1 < MAX_WANTED) {
            c->n_wanted++;
        }
    }
    fclose(f);
}

static int read_tokens(const char *path, llama_token *tokens) {
    FILE *f = fopen(path, "r");
    if (!f) die("cannot read the tokens file");
    int n = 0;
    while (n < MAX_TOKENS && fscanf(f, "%d", &tokens[n]) == 1) {
        n++;
    }
    fclose(f);
    return n;
}

static struct llama_context *new_context(struct llama_model *model, int threads, int n_ctx, struct capture *c) {
    struct llama_context_params p = llama_context_default_params();
    p.n_ctx = n_ctx;
    p.n_batch = n_ctx;
    p.n_ubatch = n_ctx;
    p.n_threads = threads;
    p.n_threads_batch = threads;
    p.type_k = GGML_TYPE_F16;
    p.type_v = GGML_TYPE_F16;
    /* The extractor's default: the same graph on both sides. */
    p.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;
    p.no_perf = true;
    if (c) {
        p.cb_eval = on_eval;
        p.cb_eval_user_data = c;
    }
    struct llama_context *ctx = llama_init_from_model(model, p);
    if (!ctx) die("cannot create a context");
    return ctx;
}

/* One prompt pass from an empty cache, every row's logits (as the extractor). */
static double decode(struct llama_context *ctx, const llama_token *tokens, int n) {
    llama_memory_clear(llama_get_memory(ctx), true);
    struct llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        batch.token[i] = tokens[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    double started = now_ms();
    if (llama_decode(ctx, batch) != 0) die("llama_decode failed");
    llama_synchronize(ctx);
    double ms = now_ms() - started;
    llama_batch_free(batch);
    return ms;
}

static void write_files(const struct capture *c, const char *dir) {
    char path[4096];
    for (int i = 0; i < c->n_captured; i++) {
        const struct captured *k = &c->captured[i];
        snprintf(path, sizeof path, "%s/%04d.bin", dir, i);
        FILE *f = fopen(path, "wb");
        if (!f) die("cannot write a checkpoint file");
        int32_t n_dims = k->n_dims;
        fwrite(&n_dims, sizeof n_dims, 1, f);
        for (int d = k->n_dims - 1; d >= 0; d--) {
            fwrite(&k->ne[d], sizeof k->ne[d], 1, f);
        }
        fwrite(k->data, sizeof(float), (size_t)(k->ne[0] * k->ne[1] * k->ne[2] * k->ne[3]), f);
        fclose(f);
    }
}

static void print_ms(const char *key, const double *ms, int n) {
    printf("\"%s\": [", key);
    for (int i = 0; i < n; i++) {
        printf("%s%.3f", i ? ", " : "", ms[i]);
    }
    printf("]");
}

int main(int argc, char **argv) {
    if (argc != 8) die("usage: raw_capture MODEL NODES TOKENS OUT_DIR THREADS N_CTX REPEAT");
    static struct capture c;
    static llama_token tokens[MAX_TOKENS];
    read_nodes(&c, argv[2]);
    int n_tokens = read_tokens(argv[3], tokens);
    int threads = atoi(argv[5]), n_ctx = atoi(argv[6]), repeat = atoi(argv[7]);
    if (n_tokens == 0 || repeat < 0 || repeat > 1000) die("no tokens, or a bad repeat count");

    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.load_mode = LLAMA_LOAD_MODE_NONE;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) die("cannot load the model");

    struct llama_context *capturing = new_context(model, threads, n_ctx, &c);
    c.keep_copies = true;
    double first_ms = decode(capturing, tokens, n_tokens);
    c.keep_copies = false;
    write_files(&c, argv[4]);

    double *with_ms = calloc(repeat + 1, sizeof(double)), *without_ms = calloc(repeat + 1, sizeof(double));
    struct llama_context *plain = new_context(model, threads, n_ctx, NULL);
    for (int i = 0; i < repeat; i++) {
        without_ms[i] = decode(plain, tokens, n_tokens);
        with_ms[i] = decode(capturing, tokens, n_tokens);
    }
    printf("{\"first_ms\": %.3f, \"files\": %d, \"bytes\": %zu, ", first_ms, c.n_captured, c.bytes);
    print_ms("with_ms", with_ms, repeat);
    printf(", ");
    print_ms("without_ms", without_ms, repeat);
    printf("}\n");

    llama_free(plain);
    llama_free(capturing);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
