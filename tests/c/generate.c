/* Generation through the C API on the real model: greedy replies are non-empty and the
 * same on every call, the token callback sees the reply piece by piece and can stop it,
 * an adapter applies, misuse returns statuses.
 *
 * usage: generate MODEL */
#include "common.h"

typedef struct Pieces {
    uint32_t calls;
    uint32_t stop_after; /* 0: never stop */
    char text[4096];
    size_t len;
} Pieces;

/* Interrupts the model from inside the call, at the third token. */
typedef struct Interrupter {
    NudgeModel *model;
    uint32_t calls;
} Interrupter;

static int32_t interrupt_at_third(uint32_t id, const char *text, size_t len, void *user) {
    Interrupter *i = (Interrupter *)user;
    (void)id, (void)text, (void)len;
    if (++i->calls == 3) {
        CHECK_OK(nudge_model_interrupt(i->model));
    }
    return 0;
}

static int32_t on_token(uint32_t id, const char *text, size_t len, void *user) {
    Pieces *p = (Pieces *)user;
    CHECK(text != NULL && strlen(text) == len);
    CHECK(p->len + len < sizeof p->text);
    (void)id;
    memcpy(p->text + p->len, text, len);
    p->len += len;
    p->text[p->len] = '\0';
    p->calls++;
    return p->stop_after != 0 && p->calls >= p->stop_after;
}

static const char *CHAT = "[{\"role\": \"user\", \"content\": \"What is the capital of France?\"}]";

int main(int argc, char **argv) {
    NudgeModel *model = open_model(model_path(argc, argv));

    NudgeGenerateOptions o;
    CHECK_OK(nudge_generate_options_init(&o, sizeof o));
    CHECK(o.struct_size == sizeof o && o.temperature == 0.0f && o.max_new_tokens == 256);
    o.max_new_tokens = 24;

    /* Greedy chat reply: non-empty, deterministic, and what the callback saw. */
    char *first = NULL, *second = NULL;
    uint32_t reason = 99;
    Pieces seen;
    memset(&seen, 0, sizeof seen);
    CHECK_OK(nudge_generate(model, NULL, CHAT, NUDGE_CHAT_JSON, &o, on_token, &seen, &first, &reason));
    CHECK(first != NULL && strlen(first) > 0);
    CHECK(reason == NUDGE_STOP_EOS || reason == NUDGE_STOP_LENGTH);
    CHECK(seen.calls > 0 && seen.calls <= o.max_new_tokens);
    CHECK(strcmp(seen.text, first) == 0);
    CHECK(strstr(first, "Paris") != NULL);
    printf("chat reply=\"%s\" reason=%u tokens=%u\n", first, reason, seen.calls);
    CHECK_OK(nudge_generate(model, NULL, CHAT, NUDGE_CHAT_JSON, &o, NULL, NULL, &second, NULL));
    CHECK(strcmp(first, second) == 0);
    nudge_string_free(second);
    /* A second free, and a pointer the library did not give, are no-ops (ASan would see
     * a double free or a free of the app's own block). */
    nudge_string_free(second);
    char *mine = strdup("the app's own string");
    nudge_string_free(mine);
    CHECK(strcmp(mine, "the app's own string") == 0);
    free(mine);

    /* Tokens: what the prompt costs before the call, the ids themselves, the text back. */
    {
        size_t n_chat = 0, got = 0, need = 0, n_text = 0;
        uint32_t ids[256], small[2];
        CHECK_OK(nudge_tokenize(model, CHAT, NUDGE_CHAT_JSON, NULL, 0, &n_chat));
        CHECK(n_chat > 8 && n_chat < 256);
        CHECK_OK(nudge_tokenize(model, CHAT, NUDGE_CHAT_JSON, ids, 256, &got));
        CHECK(got == n_chat);
        CHECK_STATUS(nudge_tokenize(model, CHAT, NUDGE_CHAT_JSON, small, 2, &need), NUDGE_ERR_INVALID);
        CHECK(need == n_chat);
        CHECK_MESSAGE("the prompt has");
        CHECK_STATUS(nudge_tokenize(model, CHAT, NUDGE_CHAT_JSON, ids, 256, NULL), NUDGE_ERR_NULL);
        const char *plain = "The capital of France is Paris.";
        CHECK_OK(nudge_tokenize(model, plain, NUDGE_TEXT, ids, 256, &n_text));
        char *back = NULL;
        CHECK_OK(nudge_detokenize(model, ids, n_text, 1, &back));
        CHECK(strcmp(back, plain) == 0);
        nudge_string_free(back);
        uint32_t bad = 0xFFFFFFF0u;
        CHECK_STATUS(nudge_detokenize(model, &bad, 1, 0, &back), NUDGE_ERR_INVALID);
        CHECK(back == NULL);
        CHECK_MESSAGE("outside the vocabulary");
        printf("tokens chat=%zu text=%zu\n", n_chat, n_text);
    }

    /* An interrupt stops the reply before its next token, with no text; the next call
     * runs normally. */
    {
        Interrupter in = {model, 0};
        char *cut = NULL;
        CHECK_STATUS(nudge_generate(model, NULL, CHAT, NUDGE_CHAT_JSON, &o, interrupt_at_third, &in, &cut, NULL),
                     NUDGE_ERR_CANCELLED);
        CHECK(cut == NULL && in.calls == 3);
        CHECK_OK(nudge_generate(model, NULL, CHAT, NUDGE_CHAT_JSON, &o, NULL, NULL, &cut, NULL));
        CHECK(strcmp(cut, first) == 0);
        nudge_string_free(cut);
    }

    /* A per-call thread count far past the cores is refused before any thread starts. */
    o.threads = 100000;
    CHECK_STATUS(nudge_generate(model, NULL, CHAT, NUDGE_CHAT_JSON, &o, NULL, NULL, &second, NULL),
                 NUDGE_ERR_INVALID);
    CHECK(second == NULL);
    o.threads = 0;

    /* Raw text continues as it is; the length limit stops it. */
    char *raw = NULL;
    o.max_new_tokens = 5;
    memset(&seen, 0, sizeof seen);
    CHECK_OK(nudge_generate(model, NULL, "The capital of France is", NUDGE_TEXT, &o, on_token, &seen, &raw,
                            &reason));
    CHECK(raw != NULL && strlen(raw) > 0 && reason == NUDGE_STOP_LENGTH && seen.calls == 5);
    printf("text reply=\"%s\"\n", raw);
    nudge_string_free(raw);

    /* The callback stops the reply after two tokens: a success with its own reason. */
    o.max_new_tokens = 24;
    memset(&seen, 0, sizeof seen);
    seen.stop_after = 2;
    char *cut = NULL;
    CHECK_OK(nudge_generate(model, NULL, CHAT, NUDGE_CHAT_JSON, &o, on_token, &seen, &cut, &reason));
    CHECK(reason == NUDGE_STOP_CALLBACK && seen.calls == 2);
    CHECK(strncmp(first, cut, strlen(cut)) == 0 && strlen(cut) < strlen(first));
    nudge_string_free(cut);

    /* A fresh adapter (B = 0) changes nothing. */
    NudgeAdapter *adapter = NULL;
    CHECK_OK(nudge_adapter_new(model, NULL, &adapter));
    char *with_adapter = NULL;
    CHECK_OK(nudge_generate(model, adapter, CHAT, NUDGE_CHAT_JSON, &o, NULL, NULL, &with_adapter, NULL));
    CHECK(strcmp(with_adapter, first) == 0);
    nudge_string_free(with_adapter);

    /* Misuse: statuses, and the output left NULL. */
    char *out = (char *)1;
    CHECK_STATUS(nudge_generate(NULL, NULL, CHAT, NUDGE_CHAT_JSON, &o, NULL, NULL, &out, NULL), NUDGE_ERR_NULL);
    CHECK(out == NULL);
    CHECK_STATUS(nudge_generate(model, NULL, NULL, NUDGE_TEXT, &o, NULL, NULL, &out, NULL), NUDGE_ERR_NULL);
    CHECK_MESSAGE("prompt is NULL");
    CHECK_STATUS(nudge_generate(model, NULL, "caf\xc3(", NUDGE_TEXT, &o, NULL, NULL, &out, NULL), NUDGE_ERR_UTF8);
    CHECK_MESSAGE("prompt is not valid UTF-8");
    CHECK(out == NULL);
    CHECK_STATUS(nudge_generate(model, NULL, "hi", 7, &o, NULL, NULL, &out, NULL), NUDGE_ERR_INVALID);
    CHECK_STATUS(nudge_generate(model, NULL, "not json", NUDGE_CHAT_JSON, &o, NULL, NULL, &out, NULL),
                 NUDGE_ERR_INVALID);
    CHECK_STATUS(nudge_generate(model, NULL, "", NUDGE_TEXT, &o, NULL, NULL, &out, NULL), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("no tokens");
    NudgeGenerateOptions bad = o;
    bad.temperature = -1.0f;
    CHECK_STATUS(nudge_generate(model, NULL, "hi", NUDGE_TEXT, &bad, NULL, NULL, &out, NULL), NUDGE_ERR_INVALID);
    bad = o;
    bad.struct_size = 3;
    CHECK_STATUS(nudge_generate(model, NULL, "hi", NUDGE_TEXT, &bad, NULL, NULL, &out, NULL), NUDGE_ERR_INVALID);
    CHECK_STATUS(nudge_generate(model, (const NudgeAdapter *)model, "hi", NUDGE_TEXT, &o, NULL, NULL, &out, NULL),
                 NUDGE_ERR_INVALID);
    CHECK(out == NULL);
    CHECK_STATUS(nudge_generate_options_init(NULL, sizeof o), NUDGE_ERR_NULL);
    nudge_string_free(NULL);

    nudge_string_free(first);
    nudge_adapter_free(adapter);
    nudge_model_free(model);
    CHECK(nudge_live_handles() == 0);
    printf("generate: ok\n");
    return 0;
}
