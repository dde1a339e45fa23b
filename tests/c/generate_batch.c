/* Batched generation through the C API on the real model: every reply of
 * nudge_generate_batch (several prompts, several samples each, sampled) is the reply
 * nudge_generate gives alone with seed + sample; the token callback sees each reply piece
 * by piece and can stop one reply or all; misuse returns statuses and leaves the outputs
 * NULL.
 *
 * usage: generate_batch MODEL */
#include "common.h"

#define N_PROMPTS 3
#define SAMPLES 2
#define N (N_PROMPTS * SAMPLES)

static const char *PROMPTS[N_PROMPTS] = {
    "[{\"role\": \"user\", \"content\": \"What is the capital of France?\"}]",
    "[{\"role\": \"user\", \"content\": \"Write a haiku about the sea.\"}]",
    "[{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Name a fruit.\"}]",
};

typedef struct Seen {
    uint32_t calls[N];
    char text[N][2048];
    size_t len[N];
    int32_t stop_reply_at; /* stop reply 1 (prompt 0, sample 1) after this many tokens */
    uint32_t stop_all_at;  /* stop everything at this many calls in all (0: never) */
    uint32_t total;
} Seen;

static int32_t on_token(size_t prompt, uint32_t sample, uint32_t id, const char *text, size_t len, void *user) {
    Seen *s = (Seen *)user;
    (void)id;
    CHECK(prompt < N_PROMPTS && sample < SAMPLES);
    CHECK(text != NULL && strlen(text) == len);
    size_t r = prompt * SAMPLES + sample;
    CHECK(s->len[r] + len < sizeof s->text[r]);
    memcpy(s->text[r] + s->len[r], text, len);
    s->len[r] += len;
    s->text[r][s->len[r]] = '\0';
    s->calls[r]++;
    s->total++;
    if (s->stop_all_at != 0 && s->total >= s->stop_all_at) {
        return NUDGE_BATCH_STOP_ALL;
    }
    if (r == 1 && s->stop_reply_at > 0 && s->calls[r] >= (uint32_t)s->stop_reply_at) {
        return NUDGE_BATCH_STOP_REPLY;
    }
    return NUDGE_BATCH_CONTINUE;
}

static void free_all(char **texts) {
    for (size_t i = 0; i < N; i++) {
        nudge_string_free(texts[i]);
        texts[i] = NULL;
    }
}

int main(int argc, char **argv) {
    NudgeModel *model = open_model(model_path(argc, argv));

    NudgeGenerateOptions o;
    CHECK_OK(nudge_generate_options_init(&o, sizeof o));
    o.max_new_tokens = 20;
    o.temperature = 0.8f;
    o.top_p = 0.95f;
    o.seed = 5;
    NudgeBatchOptions b;
    CHECK_OK(nudge_batch_options_init(&b, sizeof b));
    CHECK(b.struct_size == sizeof b && b.max_rows == 16);
    b.max_rows = 4; /* fewer rows than replies: some wait for a free row */

    /* Batched replies equal single ones with seed + sample, and what the callback saw. */
    char *texts[N];
    uint32_t reasons[N];
    static Seen seen;
    memset(&seen, 0, sizeof seen);
    CHECK_OK(nudge_generate_batch(model, NULL, PROMPTS, N_PROMPTS, NUDGE_CHAT_JSON, SAMPLES, &o, &b, on_token,
                                  &seen, texts, reasons));
    for (size_t p = 0; p < N_PROMPTS; p++) {
        for (uint32_t k = 0; k < SAMPLES; k++) {
            size_t r = p * SAMPLES + k;
            NudgeGenerateOptions single = o;
            single.seed = o.seed + k;
            char *alone = NULL;
            uint32_t reason = 99;
            CHECK_OK(nudge_generate(model, NULL, PROMPTS[p], NUDGE_CHAT_JSON, &single, NULL, NULL, &alone, &reason));
            printf("prompt %zu sample %u: \"%s\" (reason %u)\n", p, k, texts[r], reasons[r]);
            CHECK(texts[r] != NULL && strcmp(texts[r], alone) == 0);
            CHECK(reasons[r] == reason);
            CHECK(strcmp(seen.text[r], texts[r]) == 0);
            CHECK(seen.calls[r] > 0 && seen.calls[r] <= o.max_new_tokens);
            nudge_string_free(alone);
        }
    }
    CHECK(strcmp(texts[0], texts[1]) != 0 || strcmp(texts[2], texts[3]) != 0);
    CHECK(strstr(texts[0], "Paris") != NULL || strstr(texts[1], "Paris") != NULL);

    /* Without a callback and with the defaults for the batch: the same replies. */
    char *again[N];
    CHECK_OK(nudge_generate_batch(model, NULL, PROMPTS, N_PROMPTS, NUDGE_CHAT_JSON, SAMPLES, &o, NULL, NULL, NULL,
                                  again, NULL));
    for (size_t r = 0; r < N; r++) {
        CHECK(strcmp(again[r], texts[r]) == 0);
    }
    free_all(again);

    /* The callback stops reply 1 after two tokens: a prefix, with its own reason. */
    memset(&seen, 0, sizeof seen);
    seen.stop_reply_at = 2;
    CHECK_OK(nudge_generate_batch(model, NULL, PROMPTS, N_PROMPTS, NUDGE_CHAT_JSON, SAMPLES, &o, &b, on_token,
                                  &seen, again, reasons));
    CHECK(reasons[1] == NUDGE_STOP_CALLBACK && seen.calls[1] == 2);
    CHECK(strncmp(texts[1], again[1], strlen(again[1])) == 0 && strlen(again[1]) < strlen(texts[1]));
    CHECK(strcmp(again[0], texts[0]) == 0 && strcmp(again[5], texts[5]) == 0);
    free_all(again);

    /* Stopping all: every reply ends with the callback's reason. */
    memset(&seen, 0, sizeof seen);
    seen.stop_all_at = 5;
    CHECK_OK(nudge_generate_batch(model, NULL, PROMPTS, N_PROMPTS, NUDGE_CHAT_JSON, SAMPLES, &o, &b, on_token,
                                  &seen, again, reasons));
    CHECK(seen.total == 5);
    for (size_t r = 0; r < N; r++) {
        CHECK(again[r] != NULL && reasons[r] == NUDGE_STOP_CALLBACK);
    }
    CHECK(strlen(again[5]) == 0); /* prompt 2 sample 1 had no row yet (4 rows) */
    free_all(again);

    /* No prompts: nothing to do. */
    CHECK_OK(nudge_generate_batch(model, NULL, NULL, 0, NUDGE_TEXT, 1, NULL, NULL, NULL, NULL, NULL, NULL));

    /* Misuse: statuses, the message names the prompt, the outputs stay NULL. */
    const char *bad_json[N_PROMPTS] = {PROMPTS[0], "not json", PROMPTS[2]};
    for (size_t r = 0; r < N; r++) {
        again[r] = (char *)1;
    }
    CHECK_STATUS(nudge_generate_batch(model, NULL, bad_json, N_PROMPTS, NUDGE_CHAT_JSON, SAMPLES, &o, &b, NULL,
                                      NULL, again, NULL),
                 NUDGE_ERR_INVALID);
    CHECK_MESSAGE("prompts[1]");
    for (size_t r = 0; r < N; r++) {
        CHECK(again[r] == NULL);
    }
    const char *empty[2] = {"hello", ""};
    CHECK_STATUS(nudge_generate_batch(model, NULL, empty, 2, NUDGE_TEXT, 1, &o, NULL, NULL, NULL, again, NULL),
                 NUDGE_ERR_INVALID);
    CHECK_MESSAGE("prompts[1]: invalid argument: the prompt has no tokens");
    const char *null_one[2] = {"hello", NULL};
    CHECK_STATUS(nudge_generate_batch(model, NULL, null_one, 2, NUDGE_TEXT, 1, &o, NULL, NULL, NULL, again, NULL),
                 NUDGE_ERR_NULL);
    CHECK_MESSAGE("prompts[1] is NULL");
    const char *bad_utf8[1] = {"caf\xc3("};
    CHECK_STATUS(nudge_generate_batch(model, NULL, bad_utf8, 1, NUDGE_TEXT, 1, &o, NULL, NULL, NULL, again, NULL),
                 NUDGE_ERR_UTF8);
    CHECK_STATUS(nudge_generate_batch(model, NULL, NULL, 2, NUDGE_TEXT, 1, &o, NULL, NULL, NULL, again, NULL),
                 NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_generate_batch(model, NULL, PROMPTS, 1, NUDGE_CHAT_JSON, 1, &o, NULL, NULL, NULL, NULL, NULL),
                 NUDGE_ERR_NULL);
    CHECK_MESSAGE("texts_out is NULL");
    CHECK_STATUS(nudge_generate_batch(model, NULL, PROMPTS, 1, NUDGE_CHAT_JSON, 0, &o, NULL, NULL, NULL, again, NULL),
                 NUDGE_ERR_INVALID);
    CHECK_STATUS(nudge_generate_batch(NULL, NULL, PROMPTS, 1, NUDGE_CHAT_JSON, 1, &o, NULL, NULL, NULL, again, NULL),
                 NUDGE_ERR_NULL);
    NudgeBatchOptions bad_b = b;
    bad_b.struct_size = 3;
    CHECK_STATUS(
        nudge_generate_batch(model, NULL, PROMPTS, 1, NUDGE_CHAT_JSON, 1, &o, &bad_b, NULL, NULL, again, NULL),
        NUDGE_ERR_INVALID);
    NudgeGenerateOptions bad_o = o;
    bad_o.top_p = 0.0f;
    CHECK_STATUS(
        nudge_generate_batch(model, NULL, PROMPTS, 1, NUDGE_CHAT_JSON, 1, &bad_o, NULL, NULL, NULL, again, NULL),
        NUDGE_ERR_INVALID);
    CHECK(again[0] == NULL);
    CHECK_STATUS(nudge_batch_options_init(NULL, sizeof b), NUDGE_ERR_NULL);

    free_all(texts);
    nudge_model_free(model);
    CHECK(nudge_live_handles() == 0);
    printf("generate_batch: ok\n");
    return 0;
}
