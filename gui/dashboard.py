"""The spend dashboard: budgets, daily spend, spend by model / route / feature, savings, GPU."""

from __future__ import annotations

import logging
from datetime import datetime

import pyqtgraph as pg
from PySide6.QtCore import QPoint, QRect, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPen, QPolygon
from PySide6.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QStyle,
    QStyleOptionProgressBar,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from agent.api.schemas import BudgetEntry
from gui.client import AgentClient, Reply
from gui.errors import AgentError, plain_words
from gui.figures import Figures, Slice, counted_spend, micro_usd_of, usd

log = logging.getLogger(__name__)


def budget_caption(budget: BudgetEntry) -> str:
    reset = budget.resets_at
    try:
        reset = datetime.fromisoformat(reset).strftime("%Y-%m-%d %H:%M %Z").strip()
    except ValueError:
        pass
    fleet = budget.fleet
    where = f", fleet of {fleet.hosts} host(s)" if fleet is not None and fleet.hosts else ""
    caption = (
        f"{budget.name} ({budget.period}{where}): {usd(counted_spend(budget))} of {usd(budget.amount_micro_usd)}, "
        f"{usd(budget.remaining_micro_usd)} left, resets {reset}"
    )
    if budget.forecast_micro_usd is not None:
        caption += f"; forecast {usd(budget.forecast_micro_usd)}"
        if budget.breach_at:
            caption += f", runs out about {breach_text(budget.breach_at)}"
    return caption


def breach_text(breach_at: str) -> str:
    """The API's ISO time ("2026-12-17T08:55:00+00:00", UTC) to the minute: "2026-12-17 08:55 UTC"."""
    return f"{breach_at[:16].replace('T', ' ')} UTC"


def fleet_caption(budget: BudgetEntry) -> str:
    """For a budget the whole fleet shares: this box's part of it, and any problem with the share."""
    fleet = budget.fleet
    if fleet is None:
        return ""
    text = f"This box: {usd(budget.spent_micro_usd)} spent of the {usd(fleet.allotted_micro_usd)} it may spend"
    return f"{text}. {fleet.problem}" if fleet.problem else text


def budget_percent(budget: BudgetEntry) -> int:
    if budget.amount_micro_usd <= 0:
        return 0
    return min(100, counted_spend(budget) * 100 // budget.amount_micro_usd)


def forecast_fraction(budget: BudgetEntry) -> float | None:
    """Where the period's forecast lands on the budget's bar: forecast / amount (0.5: half the
    amount, 1.0 or more: it runs out); None without a forecast (too little history) or amount."""
    if budget.forecast_micro_usd is None or budget.amount_micro_usd <= 0:
        return None
    return max(0.0, budget.forecast_micro_usd / budget.amount_micro_usd)


def forecast_interval(budget: BudgetEntry) -> tuple[float, float] | None:
    """The forecast's 80% interval as fractions of the amount, like `forecast_fraction`; None
    without one. The API sends it as decimal USD strings only."""
    low, high = micro_usd_of(budget.forecast_low_usd), micro_usd_of(budget.forecast_high_usd)
    if low is None or high is None or budget.forecast_micro_usd is None or budget.amount_micro_usd <= 0:
        return None
    amount = budget.amount_micro_usd
    return max(0.0, min(low, high) / amount), max(0.0, max(low, high) / amount)


def budget_tooltip(budget: BudgetEntry) -> str:
    """The bar's tooltip: the forecast in full, or why there is none."""
    lines = [
        f"{budget.name}: {usd(counted_spend(budget))} of {usd(budget.amount_micro_usd)} spent "
        f"({budget_percent(budget)} %), {usd(budget.remaining_micro_usd)} left this {budget.period}."
    ]
    fraction = forecast_fraction(budget)
    if budget.forecast_micro_usd is None or fraction is None:
        note = budget.forecast_note.strip().rstrip(".")
        lines.append(f"No forecast yet: {note}." if note else "No forecast yet.")
        return "\n".join(lines)
    forecast = f"Forecast for the end of the {budget.period}: {usd(budget.forecast_micro_usd)}"
    low, high = micro_usd_of(budget.forecast_low_usd), micro_usd_of(budget.forecast_high_usd)
    if low is not None and high is not None:
        forecast += f" (80% interval: {usd(low)} to {usd(high)})"
    lines.append(f"{forecast}, {round(fraction * 100)} % of the budget.")
    if budget.breach_at:
        lines.append(f"At this pace it runs out about {breach_text(budget.breach_at)}.")
    else:
        lines.append(f"Not expected to run out this {budget.period}.")
    legend = "The mark on the bar is the forecast"
    if low is not None and high is not None:
        legend += ", the lighter band its 80% interval"
    if fraction >= 1.0:
        legend += "; red with an arrow: past the end of the budget"
    lines.append(f"{legend}.")
    return "\n".join(lines)


FORECAST_COLOUR = QColor("#5b21b6")  # violet: the forecast lands inside the amount
OVERRUN_COLOUR = QColor("#b91c1c")  # red: the forecast runs past the amount
HALO_COLOUR = QColor("#ffffff")  # around the mark, so it shows on any chunk colour


class BudgetBar(QProgressBar):
    """A budget's bar: what is spent, a mark where the period's forecast lands and a lighter band
    for its 80% interval. A forecast at or past the amount is marked red at the right edge, with an
    arrow pointing out of the bar."""

    def __init__(self, budget: BudgetEntry, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.budget = budget
        self.forecast = forecast_fraction(budget)
        self.interval = forecast_interval(budget)
        percent = budget_percent(budget)
        self.setRange(0, 100)
        self.setValue(percent)
        self.setFormat(budget_caption(budget))
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setToolTip(budget_tooltip(budget))
        if percent >= 100:
            self.setStyleSheet("QProgressBar::chunk { background: #d0392b; }")
        elif percent >= 80:
            self.setStyleSheet("QProgressBar::chunk { background: #e0a21b; }")

    @property
    def overrun(self) -> bool:
        """The forecast reaches the amount: the budget runs out this period."""
        return self.forecast is not None and self.forecast >= 1.0

    def track(self) -> QRect:
        """The inside of the bar: 0 at its left edge, the whole amount at its right."""
        option = QStyleOptionProgressBar()
        self.initStyleOption(option)
        rect = self.style().subElementRect(QStyle.SubElement.SE_ProgressBarContents, option, self)
        inside = rect.adjusted(1, 1, -1, -1)  # within the groove's frame
        return inside if inside.width() > 4 and inside.height() > 2 else self.rect()

    def x_of(self, fraction: float) -> int:
        track = self.track()
        return track.left() + round(min(max(fraction, 0.0), 1.0) * (track.width() - 1))

    def marker_x(self) -> int | None:
        """The column at the middle of the forecast's mark (3 pixels wide); None without a forecast."""
        if self.forecast is None:
            return None
        track = self.track()
        return min(max(self.x_of(self.forecast), track.left() + 1), track.right() - 1)

    def paintEvent(self, event: QPaintEvent) -> None:
        super().paintEvent(event)
        x = self.marker_x()
        if x is None:
            return
        track = self.track()
        colour = OVERRUN_COLOUR if self.overrun else FORECAST_COLOUR
        painter = QPainter(self)
        try:
            painter.setClipRect(track)
            if self.interval is not None:
                low, high = (self.x_of(f) for f in self.interval)
                band = QColor(colour)
                band.setAlpha(60)
                painter.fillRect(QRect(low, track.top(), max(1, high - low + 1), track.height()), band)
            if self.overrun:  # "▶|" on white: the forecast runs out of the bar
                size = max(3, (track.height() - 4) // 2)
                tip, middle = x - 3, track.center().y()
                painter.fillRect(QRect(tip - size - 3, track.top(), size + 6, track.height()), HALO_COLOUR)
                corners = ((tip - size, middle - size), (tip, middle), (tip - size, middle + size))
                arrow = QPolygon([QPoint(px, py) for px, py in corners])
                painter.setPen(QPen(colour, 1))
                painter.setBrush(colour)
                painter.drawPolygon(arrow)
            painter.fillRect(QRect(x - 2, track.top(), 5, track.height()), HALO_COLOUR)
            painter.fillRect(QRect(x - 1, track.top(), 3, track.height()), colour)
        finally:
            painter.end()


class DashboardWindow(QWidget):
    """Signals `loaded(Figures)` after each refresh, `failed(AgentError)`."""

    loaded = Signal(object)
    failed = Signal(object)

    def __init__(self, client: AgentClient, since: str = "30d", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.since = since
        self.figures: Figures | None = None
        self.setWindowTitle("aifinops spend")
        self.resize(900, 760)

        header = QHBoxLayout()
        self.total = QLabel("Loading...")
        self.total.setStyleSheet("font-size: 16px; font-weight: bold;")
        header.addWidget(self.total, 1)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        header.addWidget(self.refresh_button)

        self.budget_box = QGroupBox("Budgets")
        self.budget_layout = QVBoxLayout(self.budget_box)

        self.chart = pg.PlotWidget(background="w")
        self.chart.setMinimumHeight(200)
        self.chart.setLabel("left", "USD")
        self.chart.getAxis("left").enableAutoSIPrefix(False)  # "USD (x0.001)" reads as nonsense
        self.chart.showGrid(x=False, y=True, alpha=0.3)
        self.chart_note = QLabel()
        self.chart_note.setStyleSheet("color: #6b7280;")
        chart_box = QGroupBox(f"Daily spend (last {since})")
        chart_layout = QVBoxLayout(chart_box)
        chart_layout.addWidget(self.chart)
        chart_layout.addWidget(self.chart_note)

        self.tables = {name: self._table() for name in ("model", "route", "feature")}
        tables = QHBoxLayout()
        for name, table in self.tables.items():
            box = QGroupBox(f"By {name}")
            QVBoxLayout(box).addWidget(table)
            tables.addWidget(box)

        self.savings = QLabel()
        self.gpu = QLabel()
        extra = QGridLayout()
        extra.addWidget(QLabel("<b>Saved</b>"), 0, 0)
        extra.addWidget(self.savings, 0, 1)
        extra.addWidget(QLabel("<b>GPU</b>"), 1, 0)
        extra.addWidget(self.gpu, 1, 1)
        extra.setColumnStretch(1, 1)

        self.status = QLabel()
        self.status.setStyleSheet("color: #a02418;")
        self.status.setWordWrap(True)
        self.status.hide()

        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addWidget(self.status)
        layout.addWidget(self.budget_box)
        layout.addWidget(chart_box, 1)
        layout.addLayout(tables, 1)
        layout.addLayout(extra)

    @staticmethod
    def _table() -> QTableWidget:
        table = QTableWidget(0, 3)
        table.setHorizontalHeaderLabels(["", "Requests", "Cost"])
        table.verticalHeader().hide()
        table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        return table

    def refresh(self) -> None:
        self.refresh_button.setEnabled(False)
        reply = self.client.call(lambda: self.client.figures(self.since), Reply(self))
        reply.done.connect(self.show_figures)
        reply.failed.connect(self._failed)

    def _failed(self, error: AgentError) -> None:
        self.refresh_button.setEnabled(True)
        self.status.setText(plain_words(error))
        self.status.show()
        self.failed.emit(error)

    def show_figures(self, figures: Figures) -> None:
        self.refresh_button.setEnabled(True)
        self.status.hide()
        self.figures = figures
        self.total.setText(
            f"{usd(figures.total_cost_micro_usd)} spent on {figures.total_requests} requests (last {self.since})"
        )
        self._show_budgets(figures)
        self._show_chart(figures)
        for name, rows in (("model", figures.by_model), ("route", figures.by_route), ("feature", figures.by_feature)):
            self._fill(self.tables[name], rows)
        provider = figures.provider_cache_saved_micro_usd
        self.savings.setText(
            f"{usd(figures.cache_saved_micro_usd)} by the cache, "
            f"{usd(figures.compression_saved_micro_usd)} by prompt compression"
            + (f"; {usd(provider)} by the providers' prompt caches" if provider else "")
        )
        if figures.gpu_busy_micro_usd is None or figures.gpu_idle_micro_usd is None:
            self.gpu.setText("no GPU on this machine")
        else:
            self.gpu.setText(f"{usd(figures.gpu_busy_micro_usd)} busy, {usd(figures.gpu_idle_micro_usd)} idle")
        self.loaded.emit(figures)

    def _show_budgets(self, figures: Figures) -> None:
        while self.budget_layout.count():
            item = self.budget_layout.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.deleteLater()
        if not figures.budgets:
            none = "no budget applies to you" if figures.policy_version is not None else "no policy received yet"
            self.budget_layout.addWidget(QLabel(none))
            return
        for budget in figures.budgets:
            self.budget_layout.addWidget(BudgetBar(budget))
            if budget.fleet is not None:
                self.budget_layout.addWidget(QLabel(fleet_caption(budget)))

    def _show_chart(self, figures: Figures) -> None:
        self.chart.clear()
        if not figures.daily:
            self.chart_note.setText("This agent does not report daily spend yet (it has no /api/v1/dashboard).")
            return
        self.chart_note.setText("")
        xs = list(range(len(figures.daily)))
        heights = [day.cost_micro_usd / 1_000_000 for day in figures.daily]  # display only
        self.chart.addItem(pg.BarGraphItem(x=xs, height=heights, width=0.7, brush="#3b7dd8"))
        step = max(1, len(xs) // 8)
        ticks = [(x, figures.daily[x].day[5:]) for x in xs[::step]]
        self.chart.getAxis("bottom").setTicks([ticks])

    @staticmethod
    def _fill(table: QTableWidget, rows: tuple[Slice, ...]) -> None:
        table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, text in enumerate((row.key or "(none)", str(row.requests), usd(row.cost_micro_usd))):
                item = QTableWidgetItem(text)
                if j:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                table.setItem(i, j, item)
