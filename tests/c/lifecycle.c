/* The whole life of a personalization through the C API, on the real model:
 * open, describe, score, make an adapter, train (DPO on pairs, KTO on thumbs), save,
 * load, score again, free in an order that relies on reference counting.
 *
 * usage: lifecycle MODEL [ADAPTER_DIR]
 * Prints key=value lines that the Rust harness compares with the engine; ADAPTER_DIR
 * (kept) receives the trained adapter, else a temporary directory is used and removed. */
#include "common.h"

#include <math.h>

static const double LN2 = 0.69314718055994531;

typedef struct Seen {
    uint32_t calls;
    double first_loss;
    uint32_t total_steps;
    uint32_t has_kl;
} Seen;

static int32_t on_step(const NudgeStepMetrics *m, void *user) {
    Seen *seen = (Seen *)user;
    CHECK(m != NULL);
    seen->calls++;
    CHECK(m->step == seen->calls);
    if (seen->calls == 1) {
        seen->first_loss = m->loss;
    }
    seen->total_steps = m->total_steps;
    seen->has_kl = m->has_kl;
    CHECK(isfinite(m->loss) && isfinite(m->grad_norm) && m->grad_norm > 0.0);
    CHECK(m->skipped == 0);
    CHECK(m->pair_tokens > 0);
    printf("step=%u total=%u loss=%.17g grad_norm=%.17g lr=%.17g margins=%.17g accuracies=%.17g kl=%.17g\n",
           m->step, m->total_steps, m->loss, m->grad_norm, m->learning_rate, m->rewards_margins,
           m->rewards_accuracies, m->kl);
    return 0;
}

static double score(const NudgeModel *m, const NudgeAdapter *a, const char *prompt, const char *completion,
                    uint32_t format, uint32_t *n_tokens) {
    double logp = 0.0;
    CHECK_OK(nudge_score(m, a, prompt, completion, format, &logp, n_tokens));
    CHECK(isfinite(logp) && logp < 0.0);
    CHECK(strcmp(nudge_last_error_message(), "") == 0);
    return logp;
}

int main(int argc, char **argv) {
    const char *path = model_path(argc, argv);
    char tmp[4096];
    const char *dir = argc > 2 ? argv[2] : NULL;
    if (dir == NULL) {
        make_temp_dir(tmp, sizeof tmp);
        dir = tmp;
    }

    /* Version: the header and the library agree. */
    CHECK(nudge_version_number() == NUDGE_VERSION_NUMBER);
    {
        char v[32];
        snprintf(v, sizeof v, "%d.%d.%d", NUDGE_VERSION_MAJOR, NUDGE_VERSION_MINOR, NUDGE_VERSION_PATCH);
        CHECK(strcmp(nudge_version_string(), v) == 0);
    }

    /* Open and describe. */
    CHECK(nudge_live_handles() == 0);
    NudgeModel *model = open_model(path);
    CHECK(nudge_live_handles() == 1);
    NudgeModelInfo info;
    CHECK_OK(nudge_model_info_init(&info, sizeof info));
    CHECK(info.struct_size == sizeof info && info.eos_token_id == -1 && info.vocab_size == 0);
    CHECK_OK(nudge_model_info(model, &info));
    CHECK(info.struct_size == sizeof info);
    CHECK(info.format == NUDGE_MODEL_GGUF);
    CHECK(strcmp(info.architecture, "llama") == 0);
    CHECK(info.has_chat_template == 1);
    CHECK(info.threads == 2);
    CHECK(info.eos_token_id >= 0 && (uint32_t)info.eos_token_id < info.vocab_size);
    printf("info vocab_size=%u hidden_size=%u intermediate_size=%u num_layers=%u heads=%u kv_heads=%u "
           "head_dim=%u context_length=%u eos=%d bos=%d mapped_bytes=%llu\n",
           info.vocab_size, info.hidden_size, info.intermediate_size, info.num_layers,
           info.num_attention_heads, info.num_key_value_heads, info.head_dim, info.context_length,
           info.eos_token_id, info.bos_token_id, (unsigned long long)info.mapped_bytes);

    /* Base scores. */
    const NudgePair *p0 = &TEXT_PAIRS[0];
    const NudgePair *c0 = &CHAT_PAIRS[0];
    uint32_t n_chosen = 0, n_chat = 0;
    double base_chosen = score(model, NULL, p0->prompt, p0->chosen, NUDGE_TEXT, &n_chosen);
    double base_rejected = score(model, NULL, p0->prompt, p0->rejected, NUDGE_TEXT, NULL);
    double base_chat = score(model, NULL, c0->prompt, c0->chosen, NUDGE_CHAT_JSON, &n_chat);
    printf("base chosen=%.17g rejected=%.17g chat=%.17g chosen_tokens=%u chat_tokens=%u\n", base_chosen,
           base_rejected, base_chat, n_chosen, n_chat);

    /* The same model read into memory scores the same; an app of the first options version
     * (8 bytes, no `no_mmap`) still opens it mapped. */
    {
        NudgeModelOptions mo;
        CHECK_OK(nudge_model_options_init(&mo, sizeof mo));
        mo.no_mmap = 1;
        NudgeModel *read = NULL;
        CHECK_OK(nudge_model_open(path, &mo, &read));
        CHECK(score(read, NULL, p0->prompt, p0->chosen, NUDGE_TEXT, NULL) == base_chosen);
        nudge_model_free(read);
        CHECK_OK(nudge_model_options_init(&mo, 8));
        CHECK(mo.struct_size == 8);
        CHECK_OK(nudge_model_open(path, &mo, &read));
        CHECK(score(read, NULL, p0->prompt, p0->chosen, NUDGE_TEXT, NULL) == base_chosen);
        nudge_model_free(read);
        /* The second version ended at `no_mmap`. */
        CHECK_OK(nudge_model_options_init(&mo, 12));
        CHECK(mo.struct_size == 12 && mo.no_mmap == 0);
        CHECK_OK(nudge_model_open(path, &mo, &read));
        CHECK(score(read, NULL, p0->prompt, p0->chosen, NUDGE_TEXT, NULL) == base_chosen);
        nudge_model_free(read);
        /* Without the decoding copy: the same scores. */
        CHECK_OK(nudge_model_options_init(&mo, sizeof mo));
        CHECK(mo.precision == NUDGE_PRECISION_F32 && mo.no_decode_copy == 0);
        mo.no_decode_copy = 1;
        CHECK_OK(nudge_model_open(path, &mo, &read));
        CHECK(score(read, NULL, p0->prompt, p0->chosen, NUDGE_TEXT, NULL) == base_chosen);
        nudge_model_free(read);
        /* bf16 products: near the f32 score where the CPU has them, a named error elsewhere. */
        CHECK_OK(nudge_model_options_init(&mo, sizeof mo));
        mo.precision = NUDGE_PRECISION_BF16;
        NudgeStatus st = nudge_model_open(path, &mo, &read);
        if (st == NUDGE_OK) {
            double s = score(read, NULL, p0->prompt, p0->chosen, NUDGE_TEXT, NULL);
            printf("bf16 chosen=%.17g (f32 %.17g)\n", s, base_chosen);
            CHECK(s != base_chosen && fabs(s - base_chosen) < 0.05 * fabs(base_chosen) + 1.0);
            nudge_model_free(read);
        } else {
            CHECK(st == NUDGE_ERR_INVALID && read == NULL);
            CHECK_MESSAGE("AVX512-BF16");
        }
    }

    /* A new adapter changes nothing until trained. */
    NudgeAdapterOptions ao;
    CHECK_OK(nudge_adapter_options_init(&ao, sizeof ao));
    CHECK(ao.r == 8 && ao.targets == NUDGE_TARGET_ALL && ao.init == NUDGE_INIT_KAIMING_UNIFORM);
    ao.r = 4;
    ao.alpha = 8.0f;
    ao.seed = 7;
    NudgeAdapter *adapter = NULL;
    CHECK_OK(nudge_adapter_new(model, &ao, &adapter));
    NudgeAdapterInfo ai;
    CHECK_OK(nudge_adapter_info_init(&ai, sizeof ai));
    CHECK(ai.r == 0);
    CHECK_OK(nudge_adapter_info(adapter, &ai));
    {
        uint64_t h = info.hidden_size, i = info.intermediate_size;
        uint64_t q = (uint64_t)info.num_attention_heads * info.head_dim;
        uint64_t kv = (uint64_t)info.num_key_value_heads * info.head_dim;
        uint64_t per_rank = 2 * (h + q) + 2 * (h + kv) + 3 * (h + i);
        CHECK(ai.r == 4 && ai.alpha == 8.0f && ai.targets == NUDGE_TARGET_ALL && ai.rslora == 0);
        CHECK(ai.n_params == (uint64_t)ai.r * info.num_layers * per_rank);
    }
    double fresh_chosen = score(model, adapter, p0->prompt, p0->chosen, NUDGE_TEXT, NULL);
    CHECK(fabs(fresh_chosen - base_chosen) < 1e-6);

    /* The adapter keeps the model alive: train and save with the model handle freed. */
    nudge_model_free(model);
    model = NULL;

    NudgeDataset *data = NULL;
    CHECK_OK(nudge_dataset_new(&data));
    CHECK_OK(nudge_dataset_add_pairs(data, TEXT_PAIRS, COUNT(TEXT_PAIRS), NUDGE_TEXT));
    CHECK_OK(nudge_dataset_add_pairs(data, CHAT_PAIRS, COUNT(CHAT_PAIRS), NUDGE_CHAT_JSON));
    size_t n_pairs = 0, n_thumbs = 1;
    CHECK_OK(nudge_dataset_count(data, &n_pairs, &n_thumbs));
    CHECK(n_pairs == 4 && n_thumbs == 0);

    NudgeTrainOptions to = quick_options(2);
    Seen seen = {0, 0.0, 0, 0};
    NudgeTrainResult result = empty_result();
    CHECK_OK(nudge_train(adapter, data, &to, on_step, &seen, &result));
    CHECK(seen.calls == 2 && seen.total_steps == 2 && seen.has_kl == 0);
    /* B = 0 at the first step: policy = reference, so DPO's loss is ln 2. */
    CHECK(fabs(seen.first_loss - LN2) < 1e-4);
    CHECK(result.struct_size == sizeof result);
    CHECK(result.steps == 2 && result.cancelled == 0 && result.skipped_steps == 0);
    CHECK(result.dropped_examples == 0 && result.has_eval == 0);
    CHECK(result.last.step == 2 && result.seconds > 0.0);
    CHECK_OK(nudge_adapter_save_peft(adapter, dir));

    /* Exports: llama.cpp's LoRA GGUF (read back by the harness) and the merged model. */
    char gguf[4200], merged[4200], file[4300];
    snprintf(gguf, sizeof gguf, "%s/adapter.gguf", dir);
    snprintf(merged, sizeof merged, "%s/merged", dir);
    CHECK_STATUS(nudge_adapter_save_gguf(adapter, gguf, 3), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("dtype 3");
    CHECK(!file_exists_nonempty(gguf));
    CHECK_STATUS(nudge_adapter_save_gguf(adapter, NULL, NUDGE_DTYPE_F32), NUDGE_ERR_NULL);
    CHECK_OK(nudge_adapter_save_gguf(adapter, gguf, NUDGE_DTYPE_F32));
    CHECK(file_exists_nonempty(gguf));
    CHECK_STATUS(nudge_adapter_save_merged(adapter, merged, 7), NUDGE_ERR_INVALID);
    CHECK_OK(nudge_adapter_save_merged(adapter, merged, NUDGE_DTYPE_BF16));
    for (size_t i = 0; i < COUNT(MERGED_FILES); i++) {
        snprintf(file, sizeof file, "%s/%s", merged, MERGED_FILES[i]);
        CHECK(file_exists_nonempty(file));
    }

    /* Thumbs with KTO on a second adapter. */
    NudgeThumb thumbs[2] = {
        {TEXT_PAIRS[1].prompt, TEXT_PAIRS[1].chosen, 1},
        {TEXT_PAIRS[1].prompt, TEXT_PAIRS[1].rejected, 0},
    };
    NudgeDataset *thumb_data = NULL;
    CHECK_OK(nudge_dataset_new(&thumb_data));
    CHECK_OK(nudge_dataset_add_thumbs(thumb_data, thumbs, 2, NUDGE_TEXT));
    CHECK_OK(nudge_dataset_count(thumb_data, &n_pairs, &n_thumbs));
    CHECK(n_pairs == 0 && n_thumbs == 2);
    NudgeModel *model2 = open_model(path);
    NudgeAdapter *kto_adapter = NULL;
    CHECK_OK(nudge_adapter_new(model2, &ao, &kto_adapter));
    NudgeTrainOptions ko = quick_options(1);
    ko.loss = "kto";
    Seen kto_seen = {0, 0.0, 0, 0};
    NudgeTrainResult kto_result = empty_result();
    CHECK_OK(nudge_train(kto_adapter, thumb_data, &ko, on_step, &kto_seen, &kto_result));
    CHECK(kto_seen.calls == 1 && kto_seen.has_kl == 1 && kto_result.steps == 1);
    /* Zero rewards and KL: each example costs 1 - sigmoid(0). */
    CHECK(fabs(kto_seen.first_loss - 0.5) < 1e-4);
    printf("kto loss=%.17g\n", kto_seen.first_loss);

    /* A new handle of the same model scores with the trained adapter and with the saved
     * and reloaded one, identically. */
    NudgeAdapter *loaded = NULL;
    CHECK_OK(nudge_adapter_load(model2, dir, &loaded));
    CHECK_OK(nudge_adapter_info(loaded, &ai));
    CHECK(ai.r == 4 && ai.alpha == 8.0f && ai.targets == NUDGE_TARGET_ALL);
    double trained_chosen = score(model2, adapter, p0->prompt, p0->chosen, NUDGE_TEXT, NULL);
    double trained_rejected = score(model2, adapter, p0->prompt, p0->rejected, NUDGE_TEXT, NULL);
    double trained_chat = score(model2, adapter, c0->prompt, c0->chosen, NUDGE_CHAT_JSON, NULL);
    double loaded_chosen = score(model2, loaded, p0->prompt, p0->chosen, NUDGE_TEXT, NULL);
    CHECK(loaded_chosen == trained_chosen);
    CHECK(trained_chosen != base_chosen);
    /* Training on the pair moved the implicit reward margin its way. */
    double margin = (trained_chosen - base_chosen) - (trained_rejected - base_rejected);
    CHECK(margin > 0.0);
    printf("trained chosen=%.17g rejected=%.17g chat=%.17g margin=%.17g\n", trained_chosen, trained_rejected,
           trained_chat, margin);

    /* The merged model scores like the base with the adapter, up to bf16 rounding. */
    {
        NudgeModel *m = open_model(merged);
        NudgeModelInfo mi;
        memset(&mi, 0, sizeof mi);
        mi.struct_size = sizeof mi;
        CHECK_OK(nudge_model_info(m, &mi));
        CHECK(mi.format == NUDGE_MODEL_SAFETENSORS && mi.vocab_size == info.vocab_size);
        double merged_chosen = score(m, NULL, p0->prompt, p0->chosen, NUDGE_TEXT, NULL);
        printf("merged chosen=%.17g\n", merged_chosen);
        CHECK(fabs(merged_chosen - trained_chosen) < 0.05 * fabs(trained_chosen));
        nudge_model_free(m);
    }

    /* Free in an order that needs the reference counts; then again (harmless). */
    nudge_dataset_free(data);
    nudge_dataset_free(thumb_data);
    nudge_model_free(model2);
    nudge_adapter_free(adapter);
    nudge_adapter_free(kto_adapter);
    nudge_adapter_free(loaded);
    nudge_adapter_free(adapter);
    nudge_model_free(model2);
    nudge_dataset_free(data);
    nudge_model_free(NULL);
    nudge_adapter_free(NULL);
    nudge_dataset_free(NULL);
    CHECK(nudge_live_handles() == 0);

    if (argc <= 2) {
        remove_adapter_dir(dir);
    }
    printf("lifecycle: ok\n");
    return 0;
}
