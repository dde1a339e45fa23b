/* Every misuse of the C API gives a status and a message, never a crash: NULL arguments,
 * invalid UTF-8, bad files, bad options and struct sizes, handles of the wrong kind,
 * calls after free, double free, and a run stopped from its progress callback.
 *
 * usage: misuse MODEL */
#include "common.h"

#include <stdint.h>

static const char BAD_UTF8[] = {'a', (char)0xff, 'b', 0};

/* Writes `text` to a new file `dir`/`name`. */
static void write_file(const char *dir, const char *name, const char *text) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    CHECK(f != NULL);
    CHECK(fputs(text, f) >= 0);
    CHECK(fclose(f) == 0);
}

static void remove_file(const char *dir, const char *name) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    unlink(p);
}

static void check_null_arguments(NudgeModel *model, NudgeAdapter *adapter, NudgeDataset *data) {
    NudgeModel *m = (NudgeModel *)&m; /* must be reset to NULL */
    NudgeModelInfo mi;
    mi.struct_size = sizeof mi;
    double logp = 0.0;

    CHECK_STATUS(nudge_model_open(NULL, NULL, &m), NUDGE_ERR_NULL);
    CHECK(m == NULL);
    CHECK_MESSAGE("path is NULL");
    CHECK_STATUS(nudge_model_open("x.gguf", NULL, NULL), NUDGE_ERR_NULL);
    CHECK_MESSAGE("out is NULL");
    CHECK_STATUS(nudge_model_info(NULL, &mi), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_model_info(model, NULL), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_model_options_init(NULL, sizeof(NudgeModelOptions)), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_adapter_options_init(NULL, sizeof(NudgeAdapterOptions)), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_train_options_init(NULL, sizeof(NudgeTrainOptions)), NUDGE_ERR_NULL);

    NudgeAdapter *a = (NudgeAdapter *)&a;
    CHECK_STATUS(nudge_adapter_new(NULL, NULL, &a), NUDGE_ERR_NULL);
    CHECK(a == NULL);
    CHECK_MESSAGE("model is NULL");
    CHECK_STATUS(nudge_adapter_new(model, NULL, NULL), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_adapter_load(model, NULL, &a), NUDGE_ERR_NULL);
    CHECK_MESSAGE("dir is NULL");
    CHECK_STATUS(nudge_adapter_save_peft(NULL, "/tmp/x"), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_adapter_save_peft(adapter, NULL), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_adapter_info(NULL, NULL), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_adapter_save_gguf(NULL, "/tmp/x.gguf", NUDGE_DTYPE_F32), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_adapter_save_gguf(adapter, NULL, NUDGE_DTYPE_F32), NUDGE_ERR_NULL);
    CHECK_MESSAGE("path is NULL");
    CHECK_STATUS(nudge_adapter_save_merged(NULL, "/tmp/x", NUDGE_DTYPE_F16), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_adapter_save_merged(adapter, NULL, NUDGE_DTYPE_F16), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_generate_options_init(NULL, sizeof(NudgeGenerateOptions)), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_journal_options_init(NULL, sizeof(NudgeJournalOptions)), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_journal_data_options_init(NULL, sizeof(NudgeJournalDataOptions)), NUDGE_ERR_NULL);

    CHECK_STATUS(nudge_dataset_new(NULL), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_dataset_add_pairs(NULL, TEXT_PAIRS, 1, NUDGE_TEXT), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_dataset_add_pairs(data, NULL, 1, NUDGE_TEXT), NUDGE_ERR_NULL);
    CHECK_MESSAGE("pairs is NULL");
    CHECK_OK(nudge_dataset_add_pairs(data, NULL, 0, NUDGE_TEXT));
    CHECK_STATUS(nudge_dataset_add_thumbs(data, NULL, 2, NUDGE_TEXT), NUDGE_ERR_NULL);
    NudgePair holes[2] = {TEXT_PAIRS[0], {"prompt", NULL, "rejected"}};
    CHECK_STATUS(nudge_dataset_add_pairs(data, holes, 2, NUDGE_TEXT), NUDGE_ERR_NULL);
    CHECK_MESSAGE("pairs[1].chosen is NULL");
    NudgeThumb thumb_hole = {NULL, "x", 1};
    CHECK_STATUS(nudge_dataset_add_thumbs(data, &thumb_hole, 1, NUDGE_TEXT), NUDGE_ERR_NULL);
    CHECK_MESSAGE("thumbs[0].prompt is NULL");
    CHECK_STATUS(nudge_dataset_count(NULL, NULL, NULL), NUDGE_ERR_NULL);
    CHECK_OK(nudge_dataset_count(data, NULL, NULL));

    CHECK_STATUS(nudge_train(NULL, data, NULL, NULL, NULL, NULL), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_train(adapter, NULL, NULL, NULL, NULL, NULL), NUDGE_ERR_NULL);
    CHECK_MESSAGE("dataset is NULL");

    CHECK_STATUS(nudge_score(NULL, NULL, "p", "c", NUDGE_TEXT, &logp, NULL), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_score(model, NULL, NULL, "c", NUDGE_TEXT, &logp, NULL), NUDGE_ERR_NULL);
    CHECK_MESSAGE("prompt is NULL");
    CHECK_STATUS(nudge_score(model, NULL, "p", NULL, NUDGE_TEXT, &logp, NULL), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_score(model, NULL, "p", "c", NUDGE_TEXT, NULL, NULL), NUDGE_ERR_NULL);
    CHECK_MESSAGE("logp is NULL");

    nudge_model_free(NULL);
    nudge_adapter_free(NULL);
    nudge_dataset_free(NULL);
}

static void check_bad_utf8(NudgeModel *model, NudgeDataset *data) {
    NudgeModel *m = NULL;
    NudgeAdapter *a = NULL;
    double logp = 0.0;
    size_t before = 0, after = 0;
    CHECK_STATUS(nudge_model_open(BAD_UTF8, NULL, &m), NUDGE_ERR_UTF8);
    CHECK(m == NULL);
    CHECK_MESSAGE("path is not valid UTF-8 (first bad byte at offset 1)");
    CHECK_STATUS(nudge_adapter_load(model, BAD_UTF8, &a), NUDGE_ERR_UTF8);
    CHECK_STATUS(nudge_score(model, NULL, BAD_UTF8, "c", NUDGE_TEXT, &logp, NULL), NUDGE_ERR_UTF8);
    CHECK_STATUS(nudge_score(model, NULL, CHAT_PAIRS[0].prompt, BAD_UTF8, NUDGE_CHAT_JSON, &logp, NULL), NUDGE_ERR_UTF8);
    CHECK_MESSAGE("completion is not valid UTF-8");

    /* All or nothing: the good pair before the bad one is not added either. */
    CHECK_OK(nudge_dataset_count(data, &before, NULL));
    NudgePair pairs[2] = {TEXT_PAIRS[0], {"prompt", "chosen", BAD_UTF8}};
    CHECK_STATUS(nudge_dataset_add_pairs(data, pairs, 2, NUDGE_TEXT), NUDGE_ERR_UTF8);
    CHECK_MESSAGE("pairs[1].rejected is not valid UTF-8");
    NudgeThumb thumb = {"p", BAD_UTF8, 0};
    CHECK_STATUS(nudge_dataset_add_thumbs(data, &thumb, 1, NUDGE_TEXT), NUDGE_ERR_UTF8);
    CHECK_OK(nudge_dataset_count(data, &after, NULL));
    CHECK(after == before);
}

static void check_bad_files(NudgeModel *model, NudgeAdapter *adapter, const char *dir) {
    NudgeModel *m = NULL;
    NudgeAdapter *a = NULL;
    char p[4096];

    CHECK_STATUS(nudge_model_open("/nonexistent/model.gguf", NULL, &m), NUDGE_ERR_IO);
    CHECK_MESSAGE("/nonexistent/model.gguf");
    /* A thread count far past the cores is refused, not started. */
    NudgeModelOptions mo;
    CHECK_OK(nudge_model_options_init(&mo, sizeof mo));
    mo.threads = 100000;
    CHECK_STATUS(nudge_model_open("/nonexistent/model.gguf", &mo, &m), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("options.threads 100000");
    CHECK(m == NULL);
    CHECK_OK(nudge_model_options_init(&mo, sizeof mo));
    mo.no_mmap = 2;
    CHECK_STATUS(nudge_model_open("/nonexistent/model.gguf", &mo, &m), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("no_mmap");
    CHECK_OK(nudge_model_options_init(&mo, sizeof mo));
    mo.precision = 7;
    CHECK_STATUS(nudge_model_open("/nonexistent/model.gguf", &mo, &m), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("options.precision 7");
    CHECK_OK(nudge_model_options_init(&mo, sizeof mo));
    mo.no_decode_copy = 2;
    CHECK_STATUS(nudge_model_open("/nonexistent/model.gguf", &mo, &m), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("no_decode_copy");
    CHECK(m == NULL);
    write_file(dir, "garbage.gguf", "this is not a model");
    snprintf(p, sizeof p, "%s/garbage.gguf", dir);
    CHECK_STATUS(nudge_model_open(p, NULL, &m), NUDGE_ERR_FORMAT);
    CHECK(m == NULL);
    CHECK_MESSAGE("garbage.gguf");

    snprintf(p, sizeof p, "%s/missing-adapter", dir);
    CHECK_STATUS(nudge_adapter_load(model, p, &a), NUDGE_ERR_IO);
    write_file(dir, "adapter_config.json", "{not json");
    CHECK_STATUS(nudge_adapter_load(model, dir, &a), NUDGE_ERR_FORMAT);
    CHECK(a == NULL);
    CHECK_MESSAGE("adapter_config.json");
    remove_file(dir, "adapter_config.json");

    /* A directory below a regular file cannot be made. */
    snprintf(p, sizeof p, "%s/garbage.gguf/adapter", dir);
    CHECK_STATUS(nudge_adapter_save_peft(adapter, p), NUDGE_ERR_IO);
    CHECK_STATUS(nudge_adapter_save_merged(adapter, p, NUDGE_DTYPE_F16), NUDGE_ERR_IO);
    snprintf(p, sizeof p, "%s/garbage.gguf/adapter.gguf", dir);
    CHECK_STATUS(nudge_adapter_save_gguf(adapter, p, NUDGE_DTYPE_F16), NUDGE_ERR_IO);
    remove_file(dir, "garbage.gguf");
}

static void check_bad_options(const char *path, NudgeModel *model, NudgeAdapter *adapter, NudgeDataset *data) {
    NudgeModel *m = NULL;
    NudgeAdapter *a = NULL;

    /* Struct sizes this library does not know: zero, torn, from a newer header. */
    uint32_t sizes[3] = {0, 3, (uint32_t)sizeof(NudgeTrainOptions) + 8};
    for (int i = 0; i < 3; i++) {
        NudgeModelOptions mo;
        CHECK_OK(nudge_model_options_init(&mo, sizeof mo));
        mo.struct_size = sizes[i];
        CHECK_STATUS(nudge_model_open(path, &mo, &m), NUDGE_ERR_INVALID);
        CHECK_MESSAGE("struct_size");
        CHECK(m == NULL);
        NudgeAdapterOptions ao;
        CHECK_OK(nudge_adapter_options_init(&ao, sizeof ao));
        ao.struct_size = sizes[i];
        CHECK_STATUS(nudge_adapter_new(model, &ao, &a), NUDGE_ERR_INVALID);
        NudgeTrainOptions to = quick_options(1);
        to.struct_size = sizes[i];
        CHECK_STATUS(nudge_train(adapter, data, &to, NULL, NULL, NULL), NUDGE_ERR_INVALID);
        NudgeTrainResult result = empty_result();
        result.struct_size = sizes[i];
        to = quick_options(1);
        CHECK_STATUS(nudge_train(adapter, data, &to, NULL, NULL, &result), NUDGE_ERR_INVALID);
        NudgeModelInfo mi;
        mi.struct_size = sizes[i];
        CHECK_STATUS(nudge_model_info(model, &mi), NUDGE_ERR_INVALID);
        CHECK_STATUS(nudge_train_options_init(&to, sizes[i]), NUDGE_ERR_INVALID);
    }

    /* Adapter shapes out of their domain. */
    NudgeAdapterOptions ao;
    CHECK_OK(nudge_adapter_options_init(&ao, sizeof ao));
    ao.r = 0;
    CHECK_STATUS(nudge_adapter_new(model, &ao, &a), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("rank");
    /* A rank that would ask for terabytes is refused before any allocation. */
    ao.r = 0xFFFFFFFFu;
    CHECK_STATUS(nudge_adapter_new(model, &ao, &a), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("rank");
    CHECK_OK(nudge_adapter_options_init(&ao, sizeof ao));
    CHECK_OK(nudge_adapter_options_init(&ao, sizeof ao));
    ao.targets = 0x80;
    CHECK_STATUS(nudge_adapter_new(model, &ao, &a), NUDGE_ERR_INVALID);
    CHECK_OK(nudge_adapter_options_init(&ao, sizeof ao));
    ao.dropout = 1.0f;
    CHECK_STATUS(nudge_adapter_new(model, &ao, &a), NUDGE_ERR_INVALID);
    CHECK(a == NULL);

    /* Losses and run settings out of their domain. */
    NudgeTrainOptions to = quick_options(1);
    to.loss = "nope";
    CHECK_STATUS(nudge_train(adapter, data, &to, NULL, NULL, NULL), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("unknown loss");
    to.loss = BAD_UTF8;
    CHECK_STATUS(nudge_train(adapter, data, &to, NULL, NULL, NULL), NUDGE_ERR_UTF8);
    to = quick_options(1);
    to.label_smoothing = 0.1; /* sigmoid takes none */
    CHECK_STATUS(nudge_train(adapter, data, &to, NULL, NULL, NULL), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("label_smoothing");
    to = quick_options(1);
    to.beta = -1.0;
    CHECK_STATUS(nudge_train(adapter, data, &to, NULL, NULL, NULL), NUDGE_ERR_INVALID);
    to = quick_options(1);
    to.batch_pairs = 0;
    CHECK_STATUS(nudge_train(adapter, data, &to, NULL, NULL, NULL), NUDGE_ERR_INVALID);
    to = quick_options(1);
    to.schedule = 99;
    CHECK_STATUS(nudge_train(adapter, data, &to, NULL, NULL, NULL), NUDGE_ERR_INVALID);

    /* Text that is not what its format says. */
    double logp = 0.0;
    CHECK_STATUS(nudge_score(model, NULL, "plain text", "[]", NUDGE_CHAT_JSON, &logp, NULL), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("prompt is not valid JSON");
    CHECK_STATUS(nudge_score(model, NULL, "p", "c", 7, &logp, NULL), NUDGE_ERR_INVALID);
    CHECK_STATUS(nudge_score(model, NULL, "", "c", NUDGE_TEXT, &logp, NULL), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("empty prompt");
    NudgePair chat_bad = {"[{\"role\": \"user\"}]", "[]", "[]"};
    CHECK_STATUS(nudge_dataset_add_pairs(data, &chat_bad, 1, NUDGE_CHAT_JSON), NUDGE_ERR_INVALID);
}

static void check_wrong_order(NudgeModel *model, NudgeDataset *pairs) {
    NudgeAdapter *adapter = NULL;
    NudgeDataset *empty = NULL;
    NudgeDataset *thumbs = NULL;
    NudgeAdapterInfo ai;
    ai.struct_size = sizeof ai;
    CHECK_OK(nudge_adapter_new(model, NULL, &adapter));
    CHECK_OK(nudge_dataset_new(&empty));
    CHECK_OK(nudge_dataset_new(&thumbs));
    NudgeThumb t = {"p", "c", 1};
    CHECK_OK(nudge_dataset_add_thumbs(thumbs, &t, 1, NUDGE_TEXT));

    /* Training with nothing to train on: no rows, or only thumbs under a pair loss. */
    NudgeTrainOptions to = quick_options(1);
    CHECK_STATUS(nudge_train(adapter, empty, &to, NULL, NULL, NULL), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("needs preference pairs");
    CHECK_STATUS(nudge_train(adapter, thumbs, &to, NULL, NULL, NULL), NUDGE_ERR_INVALID);
    /* KTO trains pairs as two thumbs each (chosen up, rejected down), as TRL unpairs them. */
    to.loss = "kto";
    CHECK_OK(nudge_train(adapter, pairs, &to, NULL, NULL, NULL));
    CHECK_STATUS(nudge_train(adapter, empty, &to, NULL, NULL, NULL), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("nothing to train on");
    to = quick_options(1);
    to.eval_fraction = 0.5f;
    NudgeDataset *one = NULL;
    CHECK_OK(nudge_dataset_new(&one));
    CHECK_OK(nudge_dataset_add_pairs(one, TEXT_PAIRS, 1, NUDGE_TEXT));
    CHECK_STATUS(nudge_train(adapter, one, &to, NULL, NULL, NULL), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("eval_fraction");

    /* A handle of another kind. */
    CHECK_STATUS(nudge_adapter_info((const NudgeAdapter *)model, &ai), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("not a live adapter handle");
    NudgeModelInfo mi;
    mi.struct_size = sizeof mi;
    CHECK_STATUS(nudge_model_info((const NudgeModel *)adapter, &mi), NUDGE_ERR_INVALID);
    nudge_model_free((NudgeModel *)adapter); /* not a model: ignored */
    CHECK_OK(nudge_adapter_info(adapter, &ai));

    /* Use after free and double free. */
    nudge_adapter_free(adapter);
    CHECK_STATUS(nudge_adapter_info(adapter, &ai), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("freed");
    CHECK_STATUS(nudge_adapter_save_peft(adapter, "/tmp/never"), NUDGE_ERR_INVALID);
    nudge_adapter_free(adapter);
    nudge_dataset_free(empty);
    CHECK_STATUS(nudge_dataset_count(empty, NULL, NULL), NUDGE_ERR_INVALID);
    nudge_dataset_free(empty);
    nudge_dataset_free(thumbs);
    nudge_dataset_free(one);
}

/* Journals: bad files, NULL and wrong-kind handles, use after free. */
static void check_journal(NudgeAdapter *adapter, NudgeDataset *data, const char *dir) {
    char path[4200];
    NudgeJournal *j = (NudgeJournal *)&j;
    CHECK_STATUS(nudge_journal_open(NULL, NULL, &j), NUDGE_ERR_NULL);
    CHECK(j == NULL);
    CHECK_STATUS(nudge_journal_open(dir, NULL, NULL), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_journal_open(dir, NULL, &j), NUDGE_ERR_IO); /* a directory */
    CHECK(j == NULL);
    snprintf(path, sizeof path, "%s/no/such/dir/feedback.journal", dir);
    CHECK_STATUS(nudge_journal_open(path, NULL, &j), NUDGE_ERR_IO);
    snprintf(path, sizeof path, "%s/not-a-journal", dir);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    fputs("this is not a journal, but long enough to hold a header of one", f);
    fclose(f);
    CHECK_STATUS(nudge_journal_open(path, NULL, &j), NUDGE_ERR_FORMAT);
    CHECK(j == NULL);
    unlink(path);
    NudgeJournalOptions jo;
    CHECK_OK(nudge_journal_options_init(&jo, sizeof jo));
    jo.durability = 2;
    snprintf(path, sizeof path, "%s/feedback.journal", dir);
    CHECK_STATUS(nudge_journal_open(path, &jo, &j), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("durability 2");
    jo.struct_size = 1;
    CHECK_STATUS(nudge_journal_open(path, &jo, &j), NUDGE_ERR_INVALID);

    CHECK_OK(nudge_journal_open(path, NULL, &j));
    NudgeJournalStats st;
    st.struct_size = sizeof st;
    CHECK_STATUS(nudge_journal_stats(NULL, &st), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_journal_stats(j, NULL), NUDGE_ERR_NULL);
    st.struct_size = 3;
    CHECK_STATUS(nudge_journal_stats(j, &st), NUDGE_ERR_INVALID);
    CHECK_STATUS(nudge_journal_add_thumb(NULL, "a", "p", "c", NUDGE_TEXT, 1, 1.0f, NULL), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_journal_add_thumb(j, "a", "p", "c", 9, 1, 1.0f, NULL), NUDGE_ERR_INVALID);
    CHECK_STATUS(nudge_journal_add_pair(j, "a", "p", "c", "r", NUDGE_TEXT, -2.0f, NULL), NUDGE_ERR_INVALID);
    CHECK_STATUS(nudge_journal_add_pair(j, "a", "[]", "[]", "[]", NUDGE_CHAT_JSON, 1.0f, NULL), NUDGE_ERR_INVALID);
    CHECK_STATUS(nudge_journal_sync(NULL), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_dataset_add_journal(NULL, j, NULL, NULL, NULL), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_dataset_add_journal(data, NULL, NULL, NULL, NULL), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_journal_mark_trained(NULL, data), NUDGE_ERR_NULL);
    CHECK_STATUS(nudge_journal_mark_trained(j, NULL), NUDGE_ERR_NULL);
    /* Handles of another kind are refused, and not freed. */
    CHECK_STATUS(nudge_journal_sync((NudgeJournal *)data), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("not a live journal handle");
    CHECK_STATUS(nudge_dataset_add_journal((NudgeDataset *)j, j, NULL, NULL, NULL), NUDGE_ERR_INVALID);
    CHECK_STATUS(nudge_adapter_save_gguf((const NudgeAdapter *)j, path, NUDGE_DTYPE_F32), NUDGE_ERR_INVALID);
    nudge_journal_free((NudgeJournal *)adapter);
    nudge_dataset_free((NudgeDataset *)j);
    CHECK_OK(nudge_journal_sync(j));
    /* Nothing recorded: the file holds no event. */
    st.struct_size = sizeof st;
    CHECK_OK(nudge_journal_stats(j, &st));
    CHECK(st.records == 0);
    nudge_journal_free(j);
    CHECK_STATUS(nudge_journal_stats(j, &st), NUDGE_ERR_INVALID);
    CHECK_MESSAGE("freed");
    nudge_journal_free(j);
    unlink(path);
}

typedef struct StopAt {
    uint32_t calls;
    uint32_t stop_at;
} StopAt;

static int32_t stop_at(const NudgeStepMetrics *m, void *user) {
    StopAt *s = (StopAt *)user;
    s->calls++;
    CHECK(m->step == s->calls);
    return s->calls >= s->stop_at ? 1 : 0;
}

static void check_cancel(NudgeModel *model, NudgeDataset *data) {
    NudgeAdapter *adapter = NULL;
    CHECK_OK(nudge_adapter_new(model, NULL, &adapter));
    double base = 0.0, after = 0.0;
    const NudgePair *p = &TEXT_PAIRS[0];
    CHECK_OK(nudge_score(model, adapter, p->prompt, p->chosen, NUDGE_TEXT, &base, NULL));

    NudgeTrainOptions to = quick_options(3);
    to.batch_pairs = 1;
    to.epochs = 2;
    StopAt s = {0, 1};
    NudgeTrainResult result = empty_result();
    CHECK_STATUS(nudge_train(adapter, data, &to, stop_at, &s, &result), NUDGE_ERR_CANCELLED);
    CHECK_MESSAGE("stopped by the progress callback after step 1 of 3");
    CHECK(s.calls == 1);
    CHECK(result.cancelled == 1 && result.steps == 1 && result.last.step == 1 && result.last.total_steps == 3);
    CHECK(result.has_eval == 0);
    /* The step taken before the stop is kept. */
    CHECK_OK(nudge_score(model, adapter, p->prompt, p->chosen, NUDGE_TEXT, &after, NULL));
    CHECK(after != base);
    nudge_adapter_free(adapter);
}

int main(int argc, char **argv) {
    const char *path = model_path(argc, argv);
    char dir[4096];
    make_temp_dir(dir, sizeof dir);

    CHECK(strcmp(nudge_status_name(NUDGE_ERR_BUSY), "NUDGE_ERR_BUSY") == 0);
    CHECK(strcmp(nudge_status_name(-3), "NUDGE_UNKNOWN") == 0);
    CHECK(strcmp(nudge_last_error_message(), "") == 0);

    NudgeModel *model = open_model(path);
    NudgeAdapter *adapter = NULL;
    NudgeDataset *data = NULL;
    CHECK_OK(nudge_adapter_new(model, NULL, &adapter));
    CHECK_OK(nudge_dataset_new(&data));
    CHECK_OK(nudge_dataset_add_pairs(data, TEXT_PAIRS, COUNT(TEXT_PAIRS), NUDGE_TEXT));

    check_null_arguments(model, adapter, data);
    check_bad_utf8(model, data);
    check_bad_files(model, adapter, dir);
    check_bad_options(path, model, adapter, data);
    check_wrong_order(model, data);
    check_cancel(model, data);
    check_journal(adapter, data, dir);

    /* A success clears the message. */
    CHECK_STATUS(nudge_dataset_new(NULL), NUDGE_ERR_NULL);
    CHECK(strcmp(nudge_last_error_message(), "") != 0);
    CHECK_OK(nudge_dataset_count(data, NULL, NULL));
    CHECK(strcmp(nudge_last_error_message(), "") == 0);

    nudge_dataset_free(data);
    nudge_adapter_free(adapter);
    nudge_model_free(model);
    nudge_model_free(model);
    CHECK(nudge_live_handles() == 0);
    rmdir(dir);
    printf("misuse: ok\n");
    return 0;
}
