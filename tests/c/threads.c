/* Handles shared between threads: a second thread using an adapter that is being trained
 * gets NUDGE_ERR_BUSY (never a data race), the model and datasets stay usable meanwhile,
 * freeing handles while a run uses them is safe, scoring runs concurrently, and error
 * messages belong to their thread.
 *
 * usage: threads MODEL */
#include "common.h"

#include <pthread.h>
#include <time.h>

typedef struct Gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int in_callback;
    int release;
} Gate;

static void gate_init(Gate *g) {
    CHECK(pthread_mutex_init(&g->mu, NULL) == 0);
    CHECK(pthread_cond_init(&g->cv, NULL) == 0);
    g->in_callback = 0;
    g->release = 0;
}

static void gate_destroy(Gate *g) {
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
}

static void gate_set(Gate *g, int *flag) {
    pthread_mutex_lock(&g->mu);
    *flag = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void gate_wait(Gate *g, const int *flag) {
    pthread_mutex_lock(&g->mu);
    while (!*flag) {
        pthread_cond_wait(&g->cv, &g->mu);
    }
    pthread_mutex_unlock(&g->mu);
}

/* A run that stops in its first progress callback until the main thread lets it go. */
typedef struct TrainJob {
    NudgeAdapter *adapter;
    NudgeDataset *data;
    Gate gate;
    NudgeStatus status;
    NudgeStatus busy_inside;
    NudgeTrainResult result;
} TrainJob;

static int32_t hold_first_step(const NudgeStepMetrics *m, void *user) {
    TrainJob *job = (TrainJob *)user;
    if (m->step == 1) {
        /* The callback may call the API; the adapter it is training is busy. */
        NudgeAdapterInfo ai;
        ai.struct_size = sizeof ai;
        job->busy_inside = nudge_adapter_info(job->adapter, &ai);
        gate_set(&job->gate, &job->gate.in_callback);
        gate_wait(&job->gate, &job->gate.release);
    }
    return 0;
}

static void *train_thread(void *arg) {
    TrainJob *job = (TrainJob *)arg;
    NudgeTrainOptions to = quick_options(2);
    to.batch_pairs = 1;
    job->result = empty_result();
    job->status = nudge_train(job->adapter, job->data, &to, hold_first_step, job, &job->result);
    return NULL;
}

static void start_job(TrainJob *job, pthread_t *t, NudgeAdapter *adapter, NudgeDataset *data) {
    job->adapter = adapter;
    job->data = data;
    job->status = NUDGE_ERR_PANIC;
    job->busy_inside = NUDGE_OK;
    gate_init(&job->gate);
    CHECK(pthread_create(t, NULL, train_thread, job) == 0);
    gate_wait(&job->gate, &job->gate.in_callback);
}

static void finish_job(TrainJob *job, pthread_t t) {
    gate_set(&job->gate, &job->gate.release);
    CHECK(pthread_join(t, NULL) == 0);
    gate_destroy(&job->gate);
    if (job->status != NUDGE_OK) {
        fprintf(stderr, "training thread: %s\n", nudge_status_name((int32_t)job->status));
        exit(1);
    }
    CHECK(job->busy_inside == NUDGE_ERR_BUSY);
    CHECK(job->result.steps == 2 && job->result.cancelled == 0);
}

static void busy_adapter(NudgeModel *model, NudgeDataset *data, const char *dir) {
    NudgeAdapter *adapter = NULL;
    NudgeAdapter *other = NULL;
    CHECK_OK(nudge_adapter_new(model, NULL, &adapter));
    CHECK_OK(nudge_adapter_new(model, NULL, &other));
    const NudgePair *p = &TEXT_PAIRS[0];
    double logp = 0.0;
    NudgeAdapterInfo ai;
    ai.struct_size = sizeof ai;
    size_t before = 0, after = 0;
    CHECK_OK(nudge_dataset_count(data, &before, NULL));

    TrainJob job;
    pthread_t t;
    start_job(&job, &t, adapter, data);
    /* Every use of the adapter being trained is refused at once. */
    CHECK_STATUS(nudge_adapter_save_peft(adapter, dir), NUDGE_ERR_BUSY);
    CHECK_MESSAGE("in use");
    CHECK_STATUS(nudge_adapter_info(adapter, &ai), NUDGE_ERR_BUSY);
    CHECK_STATUS(nudge_score(model, adapter, p->prompt, p->chosen, NUDGE_TEXT, &logp, NULL), NUDGE_ERR_BUSY);
    CHECK_STATUS(nudge_adapter_save_gguf(adapter, dir, NUDGE_DTYPE_F32), NUDGE_ERR_BUSY);
    CHECK_STATUS(nudge_adapter_save_merged(adapter, dir, NUDGE_DTYPE_F16), NUDGE_ERR_BUSY);
    {
        char *text = (char *)1;
        CHECK_STATUS(nudge_generate(model, adapter, p->prompt, NUDGE_TEXT, NULL, NULL, NULL, &text, NULL),
                     NUDGE_ERR_BUSY);
        CHECK(text == NULL);
    }
    NudgeTrainOptions to = quick_options(1);
    CHECK_STATUS(nudge_train(adapter, data, &to, NULL, NULL, NULL), NUDGE_ERR_BUSY);
    /* The model, the dataset and other adapters are not held by the run. */
    CHECK_OK(nudge_score(model, NULL, p->prompt, p->chosen, NUDGE_TEXT, &logp, NULL));
    CHECK_OK(nudge_train(other, data, &to, NULL, NULL, NULL));
    CHECK_OK(nudge_dataset_add_pairs(data, CHAT_PAIRS, 1, NUDGE_CHAT_JSON));
    CHECK_OK(nudge_dataset_count(data, &after, NULL));
    CHECK(after == before + 1);
    finish_job(&job, t);

    CHECK_OK(nudge_adapter_save_peft(adapter, dir));
    CHECK_OK(nudge_adapter_info(adapter, &ai));
    nudge_adapter_free(adapter);
    nudge_adapter_free(other);
    remove_adapter_dir(dir);
}

/* Every handle the run uses is freed while it is paused; it finishes on its own references. */
static void free_during_run(NudgeModel *model, NudgeDataset *data) {
    NudgeAdapter *adapter = NULL;
    CHECK_OK(nudge_adapter_new(model, NULL, &adapter));
    TrainJob job;
    pthread_t t;
    start_job(&job, &t, adapter, data);
    nudge_adapter_free(adapter);
    nudge_dataset_free(data);
    nudge_model_free(model);
    CHECK(nudge_live_handles() == 0);
    finish_job(&job, t);
    NudgeAdapterInfo ai;
    ai.struct_size = sizeof ai;
    CHECK_STATUS(nudge_adapter_info(adapter, &ai), NUDGE_ERR_INVALID);
}

typedef struct ScoreJob {
    NudgeModel *model;
    NudgeAdapter *adapter;
    double logp[2];
    NudgeStatus status[2];
} ScoreJob;

static void *score_thread(void *arg) {
    ScoreJob *job = (ScoreJob *)arg;
    for (int i = 0; i < 2; i++) {
        job->status[i] = nudge_score(job->model, job->adapter, TEXT_PAIRS[1].prompt, TEXT_PAIRS[1].chosen,
                                     NUDGE_TEXT, &job->logp[i], NULL);
    }
    return NULL;
}

static void concurrent_scoring(NudgeModel *model) {
    NudgeAdapter *adapter = NULL;
    NudgeAdapterOptions ao;
    CHECK_OK(nudge_adapter_options_init(&ao, sizeof ao));
    ao.init = NUDGE_INIT_GAUSSIAN;
    CHECK_OK(nudge_adapter_new(model, &ao, &adapter));
    double want = 0.0;
    CHECK_OK(nudge_score(model, adapter, TEXT_PAIRS[1].prompt, TEXT_PAIRS[1].chosen, NUDGE_TEXT, &want, NULL));
    ScoreJob jobs[2] = {{model, adapter, {0, 0}, {NUDGE_ERR_PANIC, NUDGE_ERR_PANIC}},
                        {model, adapter, {0, 0}, {NUDGE_ERR_PANIC, NUDGE_ERR_PANIC}}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        CHECK(pthread_create(&t[i], NULL, score_thread, &jobs[i]) == 0);
    }
    for (int i = 0; i < 2; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        for (int k = 0; k < 2; k++) {
            CHECK(jobs[i].status[k] == NUDGE_OK);
            CHECK(jobs[i].logp[k] == want);
        }
    }
    nudge_adapter_free(adapter);
}

typedef struct LongScore {
    NudgeModel *model;
    char *text;
    Gate gate;
    int started;
    int done;
    int calls;
    NudgeStatus status;
} LongScore;

/* Scores a long text until a call is interrupted (or gives up after many calls). */
static void *long_score_thread(void *arg) {
    LongScore *job = (LongScore *)arg;
    gate_set(&job->gate, &job->started);
    for (job->calls = 1; job->calls <= 200; job->calls++) {
        double logp = 0.0;
        job->status = nudge_score(job->model, NULL, "Repeat:", job->text, NUDGE_TEXT, &logp, NULL);
        if (job->status != NUDGE_OK) {
            break;
        }
    }
    gate_set(&job->gate, &job->done);
    return NULL;
}

/* nudge_model_interrupt from another thread stops a scoring call in flight; calls that
 * begin afterwards run normally. */
static void interrupted_scoring(NudgeModel *model) {
    LongScore job;
    memset(&job, 0, sizeof job);
    job.model = model;
    size_t n = 6000;
    job.text = malloc(n + 1);
    CHECK(job.text != NULL);
    for (size_t i = 0; i < n; i++) {
        job.text[i] = "abcdefgh "[i % 9];
    }
    job.text[n] = '\0';
    gate_init(&job.gate);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, long_score_thread, &job) == 0);
    gate_wait(&job.gate, &job.started);
    /* An interrupt that falls between two calls affects neither: keep asking until one
     * lands inside a call. */
    for (;;) {
        pthread_mutex_lock(&job.gate.mu);
        int done = job.done;
        pthread_mutex_unlock(&job.gate.mu);
        if (done) {
            break;
        }
        CHECK_OK(nudge_model_interrupt(model));
        struct timespec pause = {0, 2000000};
        nanosleep(&pause, NULL);
    }
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(job.status == NUDGE_ERR_CANCELLED);
    printf("interrupted a scoring call (call %d of its thread)\n", job.calls);
    double logp = 0.0;
    CHECK_OK(nudge_score(model, NULL, TEXT_PAIRS[1].prompt, TEXT_PAIRS[1].chosen, NUDGE_TEXT, &logp, NULL));
    CHECK_STATUS(nudge_model_interrupt(NULL), NUDGE_ERR_NULL);
    gate_destroy(&job.gate);
    free(job.text);
}

static void *other_thread_errors(void *arg) {
    char *seen = (char *)arg;
    /* A new thread has no error yet, whatever the other threads did. */
    snprintf(seen, 256, "%s", nudge_last_error_message());
    NudgeModel *m = NULL;
    CHECK_STATUS(nudge_model_open(NULL, NULL, &m), NUDGE_ERR_NULL);
    CHECK_MESSAGE("path is NULL");
    return NULL;
}

static void thread_local_errors(void) {
    char seen[256] = "unset";
    CHECK_STATUS(nudge_dataset_new(NULL), NUDGE_ERR_NULL);
    CHECK_MESSAGE("out is NULL");
    pthread_t t;
    CHECK(pthread_create(&t, NULL, other_thread_errors, seen) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(strcmp(seen, "") == 0);
    CHECK(strcmp(nudge_last_error_message(), "out is NULL") == 0);
}

int main(int argc, char **argv) {
    const char *path = model_path(argc, argv);
    char dir[4096];
    make_temp_dir(dir, sizeof dir);
    NudgeModel *model = open_model(path);
    NudgeDataset *data = NULL;
    CHECK_OK(nudge_dataset_new(&data));
    CHECK_OK(nudge_dataset_add_pairs(data, TEXT_PAIRS, COUNT(TEXT_PAIRS), NUDGE_TEXT));

    thread_local_errors();
    concurrent_scoring(model);
    interrupted_scoring(model);
    busy_adapter(model, data, dir);
    free_during_run(model, data);

    CHECK(nudge_live_handles() == 0);
    printf("threads: ok\n");
    return 0;
}
