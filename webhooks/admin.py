"""Platform admin. Secrets are write-only here: only their hint is ever rendered."""

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html

from .models import Delivery, DeliveryAttempt, Destination, Source, Subscription, WebhookEvent
from .services.delivery import DeliveryRetryError, delivery_retry
from .services.sources import SourceError, ingest_url, source_rotate_secret


class SourceAdminForm(forms.ModelForm):
    new_secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Set a new signing secret. The old one keeps verifying during the rotation window.",
    )

    class Meta:
        model = Source
        fields = ("organization", "provider", "name", "options", "is_active")


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin):
    form = SourceAdminForm
    list_display = ("name", "organization", "provider", "secret_hint", "is_active", "created_at")
    list_filter = ("provider", "is_active")
    search_fields = ("name", "organization__name", "organization__slug")
    list_select_related = ("organization",)
    readonly_fields = ("ingest_url_display", "secret_hint", "previous_secret_expires_at")

    @admin.display(description="Ingest URL")
    def ingest_url_display(self, obj):
        return format_html("<code>{}</code>", ingest_url(obj)) if obj.pk else "—"

    def has_add_permission(self, request):
        # Creating a source needs the provider's secret checks: use create_source or the dashboard.
        return False

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        new_secret = form.cleaned_data.get("new_secret")
        if new_secret:
            try:
                source_rotate_secret(source=obj, new_secret=new_secret, actor=request.user)
            except SourceError as exc:
                self.message_user(request, f"Secret not changed: {exc}", messages.ERROR)


class SubscriptionInline(admin.TabularInline):
    model = Subscription
    extra = 0
    fields = ("source", "event_types")


@admin.register(Destination)
class DestinationAdmin(admin.ModelAdmin):
    list_display = ("name", "organization", "url", "secret_hint", "is_active", "created_at")
    list_filter = ("is_active",)
    search_fields = ("name", "url", "organization__slug")
    list_select_related = ("organization",)
    fields = ("organization", "name", "url", "timeout_seconds", "is_active", "secret_hint")
    readonly_fields = ("secret_hint",)
    inlines = (SubscriptionInline,)

    def has_add_permission(self, request):
        return False


class DeliveryInline(admin.TabularInline):
    model = Delivery
    extra = 0
    can_delete = False
    fields = ("destination", "status", "attempt_count", "next_attempt_at", "last_status_code", "last_error")
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin):
    list_display = ("id", "received_at", "organization", "source", "event_type", "status", "duplicate_count")
    list_filter = ("status", "source__provider")
    search_fields = ("=id", "=provider_event_id", "organization__slug")
    list_select_related = ("organization", "source")
    show_full_result_count = False
    inlines = (DeliveryInline,)
    exclude = ("body",)
    readonly_fields = [field.name for field in WebhookEvent._meta.fields if field.name != "body"] + ["body_text"]

    @admin.display(description="Body")
    def body_text(self, obj):
        return format_html("<pre style='white-space:pre-wrap'>{}</pre>", bytes(obj.body).decode("utf-8", "replace"))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    fields = ("attempt_number", "started_at", "duration_ms", "response_status", "error", "response_body")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("id", "event", "destination", "status", "attempt_count", "next_attempt_at", "last_status_code")
    list_filter = ("status",)
    search_fields = ("=id", "=event__id", "=event__provider_event_id")
    list_select_related = ("event", "destination")
    show_full_result_count = False
    readonly_fields = [field.name for field in Delivery._meta.fields]
    inlines = (DeliveryAttemptInline,)
    actions = ("retry_now",)

    @admin.action(description="Retry selected deliveries now")
    def retry_now(self, request, queryset):
        retried = 0
        for delivery in queryset:
            try:
                delivery_retry(delivery=delivery, actor=request.user)
                retried += 1
            except DeliveryRetryError:
                pass
        self.message_user(request, f"{retried} deliveries queued for another attempt.")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
